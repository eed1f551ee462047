"""Who may call what: the route × role matrix, as data, in one place.

`ACCESS` maps each route (method, path template) to the roles allowed to call it. The
authentication step (serve_app/http.py `authenticate`) looks the matched route up here: a
role outside the set is 403 `forbidden`; a route missing from the table is refused to every
role (a unit test holds the table and the app's routes to each other). The OpenAPI document
lists each route's roles (`x-roles`) and docs/access.md shows the table
(`python -m serve_app.access` prints it).

Roles:
- admin: everything, keys and the topology included.
- operator: programs, rules, rewards, restocks, manual credits and debits, reversals,
  confirmations, cancellations, review decisions, and every read but keys and topology.
- service: what a shop's backend needs: credits, debits, events, redemptions, and reads of
  members (their accounts, history, redemptions, events) and of the reward catalogue they
  redeem from.
- viewer: reads only (the same reads as operator).

A key may also be limited to some programs: any other program answers 404 exactly as if it
did not exist, before the role is looked at (a 403 would tell the program exists).
"""

from __future__ import annotations

from serve_app.auth import Role

ADMIN = frozenset({Role.ADMIN})
OPERATE = frozenset({Role.ADMIN, Role.OPERATOR})
TRANSACT = frozenset({Role.ADMIN, Role.OPERATOR, Role.SERVICE})
SERVE = frozenset({Role.ADMIN, Role.SERVICE})
READ = frozenset({Role.ADMIN, Role.OPERATOR, Role.VIEWER})
READ_MEMBERS = frozenset(Role)
PUBLIC: frozenset[Role] = frozenset()  # no key needed

P = "/v1/programs/{program_id}"
M = P + "/members/{member_id}"

ACCESS: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    # Keys and the service's own shape: admins only.
    ("POST", "/v1/keys"): ADMIN,
    ("GET", "/v1/keys"): ADMIN,
    ("GET", "/v1/keys/{key_id}"): ADMIN,
    ("DELETE", "/v1/keys/{key_id}"): ADMIN,
    ("GET", "/v1/admin/topology"): ADMIN,
    ("PUT", "/v1/admin/topology"): ADMIN,
    ("GET", "/v1/audit"): OPERATE,
    # Who am I: the calling key, its role and the routes that role may call (the console
    # shows only what the key may do).
    ("GET", "/v1/me"): READ_MEMBERS,
    # Programs and their rules.
    ("GET", "/v1/programs"): READ,
    ("PUT", P): OPERATE,
    ("GET", P): READ,
    ("PUT", P + "/rules"): OPERATE,
    ("GET", P + "/rules"): READ,
    # What-if replays of candidate rules: asked for by operators, read by any reader.
    ("POST", P + "/simulations"): OPERATE,
    ("GET", P + "/simulations/{simulation_id}"): READ,
    # Experiments of earning rules: run by operators, read by anyone reading the program.
    ("PUT", P + "/experiments/{experiment_id}"): OPERATE,
    ("GET", P + "/experiments"): READ,
    ("GET", P + "/experiments/{experiment_id}"): READ,
    ("POST", P + "/experiments/{experiment_id}/end"): OPERATE,
    ("GET", P + "/experiments/{experiment_id}/results"): READ,
    # The program's books (reconciliation): for finance, read-only keys included.
    ("GET", P + "/ledger/summary"): READ,
    # Reports on the ledger (liability, breakage, ...): for finance and marketing, read-only.
    ("GET", P + "/reports/liability"): READ,
    ("GET", P + "/reports/breakage"): READ,
    ("GET", P + "/reports/expiring"): READ,
    ("GET", P + "/reports/funnel"): READ,
    ("GET", P + "/reports/rewards"): READ,
    ("GET", P + "/reports/members"): READ,
    # Members: manual credits and debits are an operator's; a service's everyday work.
    ("POST", M + "/credits"): TRANSACT,
    ("POST", M + "/debits"): TRANSACT,
    ("GET", P + "/members"): READ_MEMBERS,
    ("GET", M): READ_MEMBERS,
    ("GET", M + "/tier-changes"): READ_MEMBERS,
    ("GET", M + "/transactions"): READ_MEMBERS,
    ("GET", M + "/redemptions"): READ_MEMBERS,
    # Rewards: defined and restocked by operators, read by whoever redeems.
    ("PUT", P + "/rewards/{reward_id}"): OPERATE,
    ("GET", P + "/rewards"): READ_MEMBERS,
    ("GET", P + "/rewards/{reward_id}"): READ_MEMBERS,
    ("POST", P + "/rewards/{reward_id}/restock"): OPERATE,
    # Redemptions: made by a shop's backend, cancelled by an operator.
    ("POST", P + "/redemptions"): SERVE,
    ("GET", P + "/redemptions/{redemption_id}"): READ_MEMBERS,
    ("POST", P + "/redemptions/{redemption_id}/cancel"): OPERATE,
    # Business events: sent by a shop's backend; confirmed or reversed by an operator.
    ("POST", P + "/events"): SERVE,
    ("POST", P + "/events/batch"): SERVE,
    ("GET", P + "/events/{event_id}"): READ_MEMBERS,
    ("POST", P + "/events/{event_id}/confirm"): OPERATE,
    ("POST", P + "/events/{event_id}/reverse"): OPERATE,
    # Reviews of debits and redemptions held above the review threshold: decided by
    # operators.
    ("GET", P + "/reviews"): READ,
    ("GET", P + "/reviews/{review_id}"): READ,
    ("POST", P + "/reviews/{review_id}/approve"): OPERATE,
    ("POST", P + "/reviews/{review_id}/reject"): OPERATE,
}

# Routes that act on the whole service rather than on programs: a key limited to programs
# may not call them whatever its role (403), or one tenant could move every tenant's shards.
# (/v1/keys, /v1/programs and /v1/audit span programs too, but show and change only what
# is within the key's programs.)
SPANS_PROGRAMS = frozenset({("GET", "/v1/admin/topology"), ("PUT", "/v1/admin/topology")})


def spans_programs(method: str, path: str) -> bool:
    return (method, path) in SPANS_PROGRAMS


def routes_for(role: Role, limited_to_programs: bool) -> list[str]:
    """The routes a key may call, as "METHOD /template" in the table's order: those of its
    role, less the ones that span programs for a key limited to programs. What /v1/me
    answers, so that a client (the console) offers only what the key may do."""
    allowed_routes = [
        f"{method} {path}"
        for (method, path), roles in ACCESS.items()
        if role in roles and not (limited_to_programs and spans_programs(method, path))
    ]
    assert allowed_routes, "every role may call at least /v1/me"
    assert all(route.split(" ", 1)[1].startswith("/v1/") for route in allowed_routes)
    return allowed_routes


ROLE_ORDER = (Role.ADMIN, Role.OPERATOR, Role.SERVICE, Role.VIEWER)


def allowed(method: str, path: str) -> frozenset[Role] | None:
    """The roles that may call the route; None for a route not in the table (refused)."""
    return ACCESS.get((method, path))


def markdown_table() -> str:
    """The matrix as the Markdown table in docs/access.md."""
    lines = [
        "| Route | " + " | ".join(role.value for role in ROLE_ORDER) + " |",
        "|---|" + "---|" * len(ROLE_ORDER),
    ]
    for (method, path), roles in ACCESS.items():
        if not roles:
            cells = ["no key"] * len(ROLE_ORDER)
        else:
            cells = ["yes" if role in roles else "—" for role in ROLE_ORDER]
        lines.append(f"| `{method} {path}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
