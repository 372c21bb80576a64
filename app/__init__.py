"""Blocklist distribution service: a vetted list of CSAM domains and URLs,
curated by police analysts and published, signed, to ISPs."""

__version__ = "1.0.0"
