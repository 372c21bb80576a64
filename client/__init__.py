"""The ISP-side pull tool, ``blocklist-pull``: fetch, verify and apply the signed feed.

It depends on the standard library and ``cryptography`` only, so ISPs can
install it on resolver and proxy hosts without the service's dependencies.
``client.minisign`` is shared with the service.
"""

__version__ = "2.0.0"
