-- Blocklist response policy zones for PowerDNS Recursor 4.5+ (Lua configuration;
-- tested with 4.8).
--
-- In recursor.conf:
--   lua-config-file=/etc/powerdns/recursor.lua
--   allow-notify-for={{OVERLAY_ZONE}},{{ZONE}}
--   allow-notify-from=<the transfer server's address>
--
-- Replace the {{...}} placeholders:
--   {{OVERLAY_ZONE}}  the overlay zone name, e.g. overlay.blocklist.rpz
--   {{ZONE}}          the base zone name, e.g. blocklist.rpz
--   {{PRIMARY}}       the transfer server, e.g. 192.0.2.53:53
--   {{TSIG_NAME}}, {{TSIG_SECRET}}  tsig_key_name and tsig_secret from `blocklist isp add`
--   {{STOP_PAGE}}     your stop page's name, e.g. stop.isp.example.net
--   {{DUMP_DIR}}      where the recursor keeps its copies, e.g. /var/lib/pdns-recursor
--
-- Two zones from the same primary with the same key: the overlay (recent
-- changes, a few records, applied at once) and the base (the whole list,
-- moved forward in the background). The overlay MUST be loaded first: the
-- first zone that matches decides, and its "CNAME rpz-passthru." records
-- for recently delisted names must win over the base.

rpzPrimary({"{{PRIMARY}}"}, "{{OVERLAY_ZONE}}", {
  tsigname = "{{TSIG_NAME}}", tsigalgo = "hmac-sha256", tsigsecret = "{{TSIG_SECRET}}",
  -- No defpol here: it would also turn the removals (rpz-passthru) and the
  -- version.canary answer into your stop page. Names added since the last
  -- fold get the list's NXDOMAIN until they move into the base.
  policyName = "blocklist-overlay",
  -- PowerDNS Recursor 4.8 answers the NOTIFY but does not transfer an RPZ
  -- on it (it only wipes its cache): it polls. The overlay is a few
  -- records, so poll it every 5 seconds (an SOA query; IXFR when changed).
  refresh = 5,
  dumpFile = "{{DUMP_DIR}}/overlay.blocklist.rpz.zone",
  seedFile = "{{DUMP_DIR}}/overlay.blocklist.rpz.zone",
})

rpzPrimary({"{{PRIMARY}}"}, "{{ZONE}}", {
  -- Every transfer is signed with your key (hmac-sha256).
  tsigname = "{{TSIG_NAME}}", tsigalgo = "hmac-sha256", tsigsecret = "{{TSIG_SECRET}}",
  -- Your stop page for every listed name (or Policy.NXDOMAIN).
  defpol = Policy.Custom,
  defcontent = "{{STOP_PAGE}}",
  policyName = "blocklist",
  -- The base moves only at folds, minutes apart: a 5-minute poll is enough.
  refresh = 300,
  -- Start from the last copy after a restart, then transfer only changes.
  dumpFile = "{{DUMP_DIR}}/blocklist.rpz.zone",
  seedFile = "{{DUMP_DIR}}/blocklist.rpz.zone",
})
