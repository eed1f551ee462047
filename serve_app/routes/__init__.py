"""One router per resource. Each route: authenticate, parse, build a typed command (or read),
answer through the one renderer (serve_app/problems.py)."""

from serve_app.routes import events, health, members, programs, redemptions, rewards, rules

ROUTERS = (
    health.router,
    programs.router,
    rules.router,
    members.router,
    rewards.router,
    redemptions.router,
    events.router,
)
