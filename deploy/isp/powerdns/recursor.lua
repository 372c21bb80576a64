-- Blocklist response policy zones for PowerDNS Recursor 4.5+ (Lua configuration).
--
-- In recursor.conf:
--   lua-config-file=/etc/powerdns/recursor.lua
--   allow-notify-for=overlay.blocklist.rpz,blocklist.rpz
--   allow-notify-from=192.0.2.53          (the blocklist transfer server)
--
-- Replace the primary address, the TSIG name and secret with the values
-- `blocklist isp add` printed, and the stop page with your own.
--
-- Two zones from the same primary with the same key: the overlay (recent
-- changes, a few records, applied at once) and the base (the whole list,
-- moved forward in the background). The overlay MUST be loaded first: the
-- first zone that matches decides, and its "CNAME rpz-passthru." records
-- for recently delisted names must win over the base.

local tsig = {
  tsigname = "acme.tsig",
  tsigalgo = "hmac-sha256",
  tsigsecret = "BASE64-SECRET-FROM-blocklist-isp-add",
}

rpzPrimary({"192.0.2.53:53"}, "overlay.blocklist.rpz", {
  tsigname = tsig.tsigname, tsigalgo = tsig.tsigalgo, tsigsecret = tsig.tsigsecret,
  -- No defpol here: it would also turn the removals (rpz-passthru) and the
  -- version.canary answer into your stop page. Names added since the last
  -- fold get the list's NXDOMAIN until they move into the base.
  policyName = "blocklist-overlay",
  refresh = 300,
  dumpFile = "/var/lib/pdns-recursor/overlay.blocklist.rpz.zone",
  seedFile = "/var/lib/pdns-recursor/overlay.blocklist.rpz.zone",
})

rpzPrimary({"192.0.2.53:53"}, "blocklist.rpz", {
  -- Every transfer is signed with your key (hmac-sha256).
  tsigname = tsig.tsigname, tsigalgo = tsig.tsigalgo, tsigsecret = tsig.tsigsecret,
  -- Your stop page for every listed name (or Policy.NXDOMAIN).
  defpol = Policy.Custom,
  defcontent = "stop.isp.example.net",
  policyName = "blocklist",
  -- The primary NOTIFYs; this is only the fallback check interval.
  refresh = 300,
  -- Start from the last copy after a restart, then transfer only changes.
  dumpFile = "/var/lib/pdns-recursor/blocklist.rpz.zone",
  seedFile = "/var/lib/pdns-recursor/blocklist.rpz.zone",
})
