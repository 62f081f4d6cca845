"""txgate gateway: server, config, routes, pipeline, state, velocity, forwarding, decision log, CLI."""
