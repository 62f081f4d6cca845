"""Rule files: loader, expression compiler, engine, rule tests and replay. Imports nothing from gateway/ or auth/."""
