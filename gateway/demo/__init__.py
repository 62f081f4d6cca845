"""``txgate demo``: a demo upstream, the gateway on the memory backend and scripted traffic
(``gateway.demo.run``); the upstream alone also runs as ``python -m gateway.demo.upstream PORT``."""
