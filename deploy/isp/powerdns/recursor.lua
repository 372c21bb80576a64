-- Blocklist response policy zone for PowerDNS Recursor 4.5+ (Lua configuration).
--
-- In recursor.conf:
--   lua-config-file=/etc/powerdns/recursor.lua
--   allow-notify-for=blocklist.rpz
--   allow-notify-from=192.0.2.53          (the blocklist transfer server)
--
-- Replace the primary address, the TSIG name and secret with the values
-- `blocklist isp add` printed, and the stop page with your own.

rpzPrimary({"192.0.2.53:53"}, "blocklist.rpz", {
  -- Every transfer is signed with your key (hmac-sha256).
  tsigname = "acme.tsig",
  tsigalgo = "hmac-sha256",
  tsigsecret = "BASE64-SECRET-FROM-blocklist-isp-add",
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
