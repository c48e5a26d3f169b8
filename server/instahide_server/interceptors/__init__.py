"""Server interceptors, one per concern; server.build_server fixes their order."""
