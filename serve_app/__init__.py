"""Ray Serve FastAPI ingress: routes, schemas, problems, auth, settings, CLI."""
