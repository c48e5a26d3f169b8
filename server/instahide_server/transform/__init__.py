"""The Encode stream for every image transform: ``servicer`` (the pipelined stream), ``encoder`` (one request in a
thread), ``families`` (the config's ``transform`` member → an adapter), one adapter module per family
(``instahide``), ``pools`` (InstaHide's public pools), ``validation`` and ``wire`` (the shared checks and the
response bytes)."""
