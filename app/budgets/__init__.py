"""Spend control per client: limits and windows (``limits``), tokens and prices (``tokens``), the
ledger in memory or Redis (``ledger``), and the service that reserves, meters and settles (``service``)."""
