"""One router per resource. Each route: authenticate, parse, build a typed command (or read),
answer through the one renderer (serve_app/problems.py)."""

from serve_app.routes import (
    admin,
    events,
    experiments,
    health,
    keys,
    me,
    members,
    programs,
    redemptions,
    reports,
    reviews,
    rewards,
    rules,
    simulations,
)

# Routes are matched in this order: members (credits and debits, the hot path) first.
ROUTERS = (
    members.router,
    health.router,
    programs.router,
    rules.router,
    simulations.router,
    experiments.router,
    rewards.router,
    redemptions.router,
    reviews.router,
    events.router,
    admin.router,
    keys.router,
    me.router,
    reports.router,
)
