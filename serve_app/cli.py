"""`points`: run the service (`up`), apply migrations (`migrate`), check it (`status`), create
and list programs (`programs create`, `programs list`), change and show how many shards own
the slots (`scale`, `topology`)."""

import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from actors.routing import SLOTS
from serve_app import scrape
from serve_app.settings import Settings, load_settings

if TYPE_CHECKING:
    from serve_app import runtime


def make_console(file: IO[str] | None = None) -> Console:
    """Rich wraps at the terminal's width, or at 80 columns when output goes to a file or a
    pipe; there, a wrapped URL or command no longer works when copied. So: no wrapping
    unless it is a terminal."""
    out = Console(file=file)
    out.soft_wrap = not out.is_terminal
    return out


console = make_console()

app = typer.Typer(help="Points: loyalty points service on Ray.", no_args_is_help=True)
programs_app = typer.Typer(
    help="Programs: create one from a template, list them.", no_args_is_help=True
)

# A page of `points programs list` (the API's page size bound is domain.limits.PAGE_SIZE_MAX).
PROGRAMS_PAGE_SIZE = 200
# Pages followed at most: a server that kept answering a next_cursor would otherwise keep
# the command going forever. 10 000 pages of 200 is two million programs.
PROGRAMS_PAGES_MAX = 10_000
HTTP_TIMEOUT_S = 30.0
app.add_typer(programs_app, name="programs")
keys_app = typer.Typer(
    help="API keys: create one for a role (and programs), list them, revoke one.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _admin_key(settings: Settings, key: str | None) -> str:
    if key:
        return key
    if settings.admin_key:
        return settings.admin_key
    try:
        return settings.admin_key_file.read_text().strip()
    except OSError as exc:
        console.print(f"[red]no API key[/]: pass --key or set POINTS_ADMIN_KEY ({exc})")
        raise typer.Exit(2) from exc


def _api_client(url: str | None, key: str | None) -> httpx.Client:
    """The CLI's HTTP client: `--url`, else the configured host and port; `--key`, else the
    admin key (POINTS_ADMIN_KEY or the key file)."""
    settings: Settings = load_settings()
    base = url or f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {_admin_key(settings, key)}"}
    return httpx.Client(base_url=base, headers=headers, timeout=HTTP_TIMEOUT_S)


@contextlib.contextmanager
def _reaching(base_url: object) -> Iterator[None]:
    """A service that does not answer: say so and exit 1 (every command that calls it)."""
    try:
        yield
    except httpx.HTTPError as exc:
        console.print(f"[red]down[/]: {base_url} does not answer ({type(exc).__name__})")
        raise typer.Exit(1) from exc


class ListRefused(Exception):
    """The service answered a list request with something other than a page."""


def fetch_programs(
    client: httpx.Client, page_size: int = PROGRAMS_PAGE_SIZE
) -> list[dict[str, Any]]:
    """Every program, following next_cursor from the first page to the last."""
    return fetch_all(client, "/v1/programs", page_size)


def fetch_all(
    client: httpx.Client, path: str, page_size: int = PROGRAMS_PAGE_SIZE
) -> list[dict[str, Any]]:
    """Every item of a list, following next_cursor from the first page to the last."""
    assert 0 < page_size <= PROGRAMS_PAGE_SIZE
    programs: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(PROGRAMS_PAGES_MAX):
        params: dict[str, str | int] = {"limit": page_size}
        if cursor is not None:
            params["cursor"] = cursor
        answer = client.get(path, params=params)
        if answer.status_code != 200:
            raise ListRefused(f"{answer.status_code}: {answer.text}")
        try:
            page = answer.json()
            programs.extend(page["items"])
            cursor = page["next_cursor"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ListRefused(f"not a page: {answer.text[:200]}") from exc
        if cursor is None:
            return programs
    raise ListRefused(f"still more after {PROGRAMS_PAGES_MAX} pages of {page_size}")


def programs_table(programs: list[dict[str, Any]]) -> Table:
    table = Table("id", "name", "created")
    for program in programs:
        # Names are the users' text, not Rich markup: "[b]" stays "[b]".
        table.add_row(escape(program["program_id"]), escape(program["name"]), program["created_at"])
    return table


def _list_or_exit(url: str | None, key: str | None, path: str) -> list[dict[str, Any]]:
    """Every item of a list from the service; a refusal or no answer: say so, exit 1."""
    client = _api_client(url, key)
    try:
        with _reaching(client.base_url), client:
            return fetch_all(client, path)
    except ListRefused as exc:
        console.print(f"[red]list refused[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc


@programs_app.command("list")
def programs_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the programs as a JSON array.")
    ] = False,
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """List every program (all pages): id, name and when it was created."""
    programs = _list_or_exit(url, key, "/v1/programs")
    if as_json:
        typer.echo(json.dumps(programs, indent=2, ensure_ascii=False))
    elif programs:
        console.print(programs_table(programs))
    else:
        console.print("No programs yet: create one with `points programs create`.")


@programs_app.command("create")
def programs_create(
    program_id: Annotated[str, typer.Argument(help="The new program's id, e.g. shop.")],
    template: Annotated[
        str, typer.Option(help="ecommerce, education or finance (see docs/earning.md).")
    ],
    name: Annotated[str | None, typer.Option(help="Display name (default: template's).")] = None,
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """Create (or update) a program from a template: its policy and a first rule set."""
    from domain.templates import TEMPLATES

    if template not in TEMPLATES:
        console.print(f"[red]unknown template[/] {template!r}: one of {', '.join(TEMPLATES)}")
        raise typer.Exit(2)
    chosen = TEMPLATES[template]
    client = _api_client(url, key)
    with _reaching(client.base_url), client:
        program = client.put(
            f"/v1/programs/{program_id}",
            json={"name": name or chosen["name"], "policy": chosen["policy"]},
        )
        if program.status_code not in (200, 201):
            console.print(f"[red]program refused[/] {program.status_code}: {program.text}")
            raise typer.Exit(1)
        rules = client.put(f"/v1/programs/{program_id}/rules", json={"rules": chosen["rules"]})
        if rules.status_code != 201:
            console.print(f"[red]rules refused[/] {rules.status_code}: {rules.text}")
            raise typer.Exit(1)
    version = rules.json()["version"]
    console.print(
        f"program [bold]{program_id}[/] ({'created' if program.status_code == 201 else 'updated'})"
        f" from template {template}: policy version {program.json()['policy_version']},"
        f" rule set version {version} ({len(chosen['rules'])} rules)"
    )
    console.print(chosen["description"])


def _refused(what: str, answer: httpx.Response) -> None:
    if answer.status_code >= 300:
        console.print(f"[red]{what} refused[/] {answer.status_code}: {escape(answer.text)}")
        raise typer.Exit(1)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'shop backend'.")],
    role: Annotated[str, typer.Option(help="admin, operator, service or viewer.")],
    program: Annotated[
        list[str] | None,
        typer.Option("--program", help="Limit the key to this program (repeat for more)."),
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="RFC 3339 time it stops working (default: never).")
    ] = None,
    per_s: Annotated[
        int | None, typer.Option("--per-s", min=1, help="Own rate limit: requests per second.")
    ] = None,
    burst: Annotated[
        int | None, typer.Option(min=1, help="Own rate limit: bucket size (default: 2 × per-s).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """Create a key. It is printed once, here: only its hash is kept."""
    body: dict[str, Any] = {"name": name, "role": role, "programs": program or None}
    if expires_at is not None:
        body["expires_at"] = expires_at
    if per_s is not None or burst is not None:
        rate = per_s or burst or 1
        body["rate_limit"] = {"per_s": rate, "burst": burst or 2 * rate}
    client = _api_client(url, key)
    with _reaching(client.base_url), client:
        answer = client.post("/v1/keys", json=body)
    _refused("key", answer)
    made = answer.json()
    scope = ", ".join(made["programs"]) if made["programs"] else "every program"
    console.print(f"key [bold]{made['id']}[/] ({made['role']}, {escape(scope)}):")
    # The key alone on its own line, unstyled: easy to copy or capture.
    typer.echo(made["key"])
    console.print("[dim]Store it now: it is not shown again.[/]")


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False,
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """Every key: id, name, role, programs, expiry, last use, revoked (never a secret)."""
    keys = _list_or_exit(url, key, "/v1/keys")
    if as_json:
        typer.echo(json.dumps(keys, indent=2, ensure_ascii=False))
        return
    table = Table("id", "name", "role", "programs", "expires", "last used", "revoked")
    for item in keys:
        table.add_row(
            item["id"],
            escape(item["name"]),
            item["role"],
            escape(", ".join(item["programs"])) if item["programs"] else "all",
            item["expires_at"] or "never",
            item["last_used_at"] or "—",
            item["revoked_at"] or "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `points keys list`).")],
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """Revoke a key: refused everywhere within a few seconds."""
    client = _api_client(url, key)
    with _reaching(client.base_url), client:
        answer = client.delete(f"/v1/keys/{key_id}")
    _refused("revoke", answer)
    console.print(f"key [bold]{key_id}[/] revoked at {answer.json()['revoked_at']}")


DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where embedded PostgreSQL/Redis keep data.")
]
DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="PostgreSQL URL (default: embedded).")
]
RedisUrl = Annotated[str | None, typer.Option("--redis-url", help="Redis URL (default: embedded).")]


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="HTTP host.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Join this Ray cluster instead of starting one.")
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(help="Account shard actors of a new database (then: `points scale`)."),
    ] = None,
    replicas: Annotated[int | None, typer.Option(help="HTTP ingress replicas.")] = None,
    max_replicas: Annotated[
        int | None,
        typer.Option(help="Autoscale the ingress from --replicas up to this many replicas."),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
) -> None:
    """Run the whole service in the foreground until Ctrl-C or SIGTERM (or until its Ray
    cluster stops answering: exit status 1)."""
    from serve_app import runtime

    settings = load_settings(
        host=host,
        port=port,
        ray_address=address,
        shards=shards,
        replicas=replicas,
        max_replicas=max_replicas,
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
    )
    if not _port_free(settings.host, settings.port):
        console.print(
            f"[red]{settings.host}:{settings.port} is already in use[/]: is Points already "
            "running? Choose another with --port or POINTS_PORT."
        )
        raise typer.Exit(1)
    runtime.become_subreaper()
    stop = StopFlag()

    def on_signal(*_: object) -> None:
        stop.set()

    def catch_signals() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)

    catch_signals()

    services = None
    started_ray = False
    stopped_cleanly = False
    cluster_gone = False
    try:
        with console.status("starting PostgreSQL and Redis…"):
            services = runtime.start_services(settings)
        with console.status("applying migrations…"):
            admin_key, key_source = runtime.prepare_database(settings, services.database_url)
        with console.status("starting Ray…"):
            started_ray = runtime.start_ray(settings)
        catch_signals()  # ray.init installs its own SIGTERM handler (sys.exit): take it back
        if not stop.is_set():
            with console.status("deploying the Serve application…"):
                base_url = runtime.deploy(settings, services.database_url, services.redis_url)
            targets_file = scrape.targets_path(settings.data_dir)
            targets = runtime.scrape_targets()
            scrape.write_targets(targets_file, targets)
            print_banner(
                console,
                base_url,
                services.database_url,
                services.redis_url,
                runtime.admin_key_note(admin_key, key_source, settings.admin_key_file),
                runtime.ray_address(),
                (targets, targets_file),
            )
            # Until Ctrl-C / SIGTERM, or until the Ray cluster is gone (its head died):
            # then stop cleanly, before Ray ends this process on its own. Meanwhile the
            # scrape targets follow the nodes that join and leave.
            cluster_gone = runtime.serve_until_stopped(
                stop, on_answer=runtime.keep_targets(targets_file)
            )
            if cluster_gone:
                where = settings.ray_address or "the local head"
                console.print(
                    f"[red]The Ray cluster stopped answering[/] ({where}; nothing for"
                    f" {runtime.CLUSTER_GONE_AFTER_S:.0f} s): stopping."
                )
    finally:
        stopped_cleanly = _stop(settings, services, started_ray)
    if not stopped_cleanly or cluster_gone:
        raise typer.Exit(1)


# How often `points up` looks whether it was asked to stop.
STOP_POLL_S = 0.2


class StopFlag:
    """Set by the signal handlers, waited on by the main thread. Not a threading.Event:
    its set() takes a lock, and a second signal arriving while the first handler holds it
    (Ctrl-C reaches `timeout points up` and `points up` both) deadlocked the main thread
    inside its own handler. Setting a bool takes no lock."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Like threading.Event.wait: True once set, False when `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = (
                STOP_POLL_S if deadline is None else min(STOP_POLL_S, deadline - time.monotonic())
            )
            if left <= 0:
                return False
            time.sleep(left)  # a signal interrupts the sleep; the loop looks again
        return True


def print_banner(
    out: Console,
    base_url: str,
    database_url: str,
    redis_url: str,
    admin_key_note: str,
    ray_address: str | None = None,
    scrape_targets: tuple[list[str], Path] | None = None,
) -> None:
    """What `points up` prints once the service answers: where everything is."""
    out.print(f"[bold green]Points is up[/] at {base_url}")
    out.print(f"  API docs:   {base_url}/docs")
    out.print(f"  Console:    {base_url}/admin (sign in with the admin key)")
    out.print(f"  Database:   {_redact(database_url)}")
    out.print(f"  Redis:      {redis_url}")
    out.print(f"  Admin key:  {admin_key_note}")
    if ray_address:
        out.print(f"  Ray:        {ray_address} (add a node: ray start --address {ray_address})")
    if scrape_targets is not None:
        targets, path = scrape_targets
        shown = ", ".join(f"http://{target}/metrics" for target in targets) or "none yet"
        out.print(f"  Metrics:    {shown}")
        out.print(f"              (Prometheus file discovery: {path}; deploy/prometheus/)")
    out.print("Press Ctrl-C to stop.")


def _stop(settings: Settings, services: "runtime.Services | None", started_ray: bool) -> bool:
    """Stop what `up` started; one line either way. Returns whether everything stopped."""
    from serve_app import runtime

    failure = None
    with console.status("stopping…"):
        with contextlib.suppress(Exception):
            runtime.stop_ray(settings, started_ray, reap=False)
        if services is not None:
            try:
                services.stop()
            except RuntimeError as exc:
                failure = exc
        leftovers = runtime.reap_descendants()
    details = ("local Ray head shut down" if started_ray else "") + (
        f"; ended {leftovers} leftover processes" if leftovers else ""
    )
    if failure is not None:
        console.print(f"[red]Stopped with an error[/]: {failure}")
        return False
    console.print("Stopped" + (f" ({details.lstrip('; ')})" if details else "") + ".")
    return True


@app.command()
def migrate(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Apply every database migration (starting the embedded PostgreSQL if needed)."""
    from db.engine import migrate as run_migrations

    with _database(data_dir, database_url) as url:
        run_migrations(url)
        console.print("[green]migrations applied[/]")


@contextlib.contextmanager
def _database(data_dir: Path | None, database_url: str | None) -> Iterator[str]:
    """The configured database's URL, starting (and then stopping) the embedded one when
    none is configured (it is shared with a `points up` running on the same data dir)."""
    from db.embedded import EmbeddedPostgres
    from db.engine import libpq_url

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    embedded = None
    url = settings.database_url
    if not url:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
    try:
        yield libpq_url(url)
    finally:
        if embedded is not None:
            embedded.stop()


@app.command()
def backup(
    to: Annotated[
        Path | None,
        typer.Option("--to", help="An empty or new directory (default: data dir/backups/<time>)."),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """A consistent snapshot of the database (safe while the service runs) with a manifest:
    time, schema revision, every program's ledger sums, row counts, the dump's checksum."""
    from db.backup import BackupError
    from db.backup import backup as take_backup

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = to or settings.data_dir / "backups" / stamp
    with _database(data_dir, database_url) as url, console.status("backing up…"):
        try:
            made = take_backup(url, directory)
        except BackupError as exc:
            console.print(f"[red]backup failed[/]: {escape(str(exc))}")
            raise typer.Exit(1) from exc
    rows = made.manifest["rows"]
    console.print(
        f"backup in [bold]{escape(str(directory))}[/]: {made.manifest['dump']['bytes']:,} bytes,"
        f" {rows['transactions']:,} transactions, {len(made.manifest['ledger'])} programs,"
        f" schema {made.manifest['schema_revision']}, taken at {made.manifest['taken_at']}"
    )


@app.command()
def restore(
    directory: Annotated[Path, typer.Argument(help="A directory `points backup` wrote.")],
    database_url: Annotated[
        str, typer.Option("--database-url", help="An EMPTY database to restore into.")
    ],
) -> None:
    """Restore a backup into an empty database, then prove it: the dump's checksum, the
    manifest computed again, every ledger invariant. Exits 1 on any difference."""
    from db.backup import BackupError
    from db.backup import restore as run_restore
    from db.engine import libpq_url

    with console.status("restoring…"):
        try:
            restored = run_restore(directory, libpq_url(database_url))
        except BackupError as exc:
            console.print(f"[red]restore failed[/]: {escape(str(exc))}")
            raise typer.Exit(1) from exc
    console.print(
        f"restored and verified: {restored.manifest['rows']['transactions']:,} transactions as"
        f" of {restored.manifest['taken_at']}, ledger sums equal to the manifest,"
        f" {len(restored.checks)} invariants hold"
    )


@app.command()
def demo(
    program: Annotated[str, typer.Option(help="The id of the program to create.")] = "demo",
    members: Annotated[int, typer.Option(min=1, max=100_000, help="Members.")] = 200,
    weeks: Annotated[int, typer.Option(min=1, max=104, help="Weeks of activity.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed, the same story).")] = 7,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a program with WEEKS of activity up to now: orders, check-ins, redemptions and
    refunds of MEMBERS members, written through the real cores day by day (safe while the
    service runs; the program must be new). Then open /admin, read its reports, run a
    what-if on it."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from actors.demo import play

    with (
        _database(data_dir, database_url) as url,
        Progress(TextColumn("playing days"), BarColumn(), MofNCompleteColumn()) as bar,
    ):
        task = bar.add_task("days", total=weeks * 7)
        try:
            played = asyncio.run(
                play(
                    url,
                    program,
                    members,
                    weeks,
                    seed,
                    lambda done, _total: bar.update(task, completed=done),
                )
            )
        except ValueError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(1) from exc
    console.print(
        f"[bold green]Program {played.program_id!r}[/]: {played.members} members,"
        f" {played.days} days: {played.events} events, {played.redemptions} redemptions,"
        f" {played.reversals} refunded orders ({played.refused} refused, as a shop's would be)."
    )


@app.command()
def verify(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="A backup (or its manifest.json): its anchored hash chain heads must still"
            " be in the chains.",
        ),
    ] = None,
) -> None:
    """Check every ledger invariant in PostgreSQL, in one snapshot (safe while the service
    runs): balances equal their lots and their ledger entries, every transaction balances,
    lifetime totals, stock, holds, no idempotency key applied twice, and the hash chain
    recomputed from the rows (the first broken link of each chain is shown). Exits 1 on any
    violation, listing examples."""
    from db.backup import BackupError, manifest_anchors, read_manifest
    from db.verify_repo import run_checks

    anchors = None
    if manifest is not None:
        try:
            anchors = manifest_anchors(read_manifest(manifest))
        except (BackupError, ValueError) as exc:
            console.print(f"[red]cannot read the manifest[/]: {escape(str(exc))}")
            raise typer.Exit(1) from exc
        if anchors is None:
            console.print("[red]the manifest anchors no hash chain[/] (taken before 0008)")
            raise typer.Exit(1)
    with _database(data_dir, database_url) as url, console.status("checking the ledger…"):
        results = run_checks(url, anchors)
    table = Table("check", "violations", "examples")
    for result in results:
        examples = "\n".join(escape(str(example)) for example in result.examples)
        mark = "[green]0[/]" if not result.violations else f"[red]{result.violations}[/]"
        table.add_row(escape(result.name), mark, examples)
    console.print(table)
    failed = sum(1 for result in results if result.violations)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


@app.command()
def status(
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
) -> None:
    """Is the service up? Its shards, database and Redis."""
    settings: Settings = load_settings()
    base = url or f"http://{settings.host}:{settings.port}"
    with _reaching(base):
        health = httpx.get(f"{base}/healthz", timeout=3)
        ready = httpx.get(f"{base}/readyz", timeout=10)
    console.print(f"service:  {'up' if health.status_code == 200 else 'unhealthy'} ({base})")
    body = ready.json()
    if ready.status_code != 200:
        console.print(f"[red]not ready[/]: {body.get('detail')}")
        raise typer.Exit(1)
    console.print(f"database: {body['database']}")
    console.print(f"redis:    {body.get('redis', 'n/a')}")
    for shard in body["shards"]:
        console.print(
            f"shard {shard['shard']}: {shard['cached_accounts']} cached accounts,"
            f" {int(shard['ops'])} operations in {int(shard['batches'])} group commits,"
            f" {int(shard['commit_failures'])} failed commits{_where(shard)}"
        )
    for shard in body.get("reward_shards", []):
        console.print(
            f"reward shard {shard['reward_shard']}: {shard['rewards_loaded']} rewards loaded,"
            f" {shard['sagas_in_flight']} redemptions in flight{_where(shard)}"
        )


# How often `points scale` looks at the move, and how long it waits for it at most.
SCALE_POLL_S = 0.5
SCALE_WAIT_S = 600.0


@app.command()
def scale(
    shards: Annotated[
        int | None,
        typer.Option("--shards", min=1, max=SLOTS, help="Account shards to move to."),
    ] = None,
    reward_shards: Annotated[
        int | None,
        typer.Option("--reward-shards", min=1, max=SLOTS, help="Reward shards to move to."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the move until it is done (it runs on regardless).")
    ] = True,
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """Change how many account (and reward) shards own the slots, live: slots are handed
    off a chunk at a time while requests keep being served."""
    if shards is None and reward_shards is None:
        console.print("[red]nothing to do[/]: give --shards and/or --reward-shards")
        raise typer.Exit(2)
    body = {
        name: value
        for name, value in (("account_shards", shards), ("reward_shards", reward_shards))
        if value is not None
    }
    _put_topology(body, wait, url, key)


@app.command()
def upgrade(
    version: Annotated[
        str | None,
        typer.Option(help="Name of the release Serve runs now; its code replaces the shards'."),
    ] = None,
    canary_slots: Annotated[
        int | None,
        typer.Option(
            "--canary-slots", min=1, max=SLOTS, help="Move only this many slots first, then pause."
        ),
    ] = None,
    promote: Annotated[bool, typer.Option(help="Go on from a paused canary.")] = False,
    rollback: Annotated[bool, typer.Option(help="Move a paused canary's slots back.")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the move until it ends or pauses.")] = True,
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """Replace the shards by shards running the release Serve now runs (deploy it first),
    one slot hand-off at a time; with --canary-slots, pause after a few and compare the two
    versions' error rates (`points topology`), then --promote or --rollback."""
    if sum((version is not None, promote, rollback)) != 1:
        console.print("[red]give one of[/] --version, --promote, --rollback")
        raise typer.Exit(2)
    body: dict[str, Any]
    if version is not None:
        body = {"version": version}
        if canary_slots is not None:
            body["canary_slots"] = canary_slots
    else:
        body = {"action": "promote" if promote else "rollback"}
    _put_topology(body, wait, url, key)


def _put_topology(body: dict[str, Any], wait: bool, url: str | None, key: str | None) -> None:
    client = _api_client(url, key)
    with _reaching(client.base_url), client:
        answer = client.put("/v1/admin/topology", json=body)
        if answer.status_code != 202:
            problem = answer.json()
            console.print(
                f"[red]refused[/] ({answer.status_code} {problem.get('code')}):"
                f" {problem.get('detail')}; nothing changed"
            )
            raise typer.Exit(1)
        view = answer.json()
        if wait:
            view = _follow_move(client, view)
    console.print(topology_table(view))


def _follow_move(client: httpx.Client, view: dict[str, Any]) -> dict[str, Any]:
    """A progress bar over the slots the move hands off, until it is done."""
    move = view["move"]
    deadline = time.monotonic() + SCALE_WAIT_S
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("moving slots", total=max(move["slots_total"], 1))
        while move is not None and move["state"] == "running" and time.monotonic() < deadline:
            progress.update(task, completed=move["slots_moved"])
            time.sleep(SCALE_POLL_S)
            view = client.get("/v1/admin/topology").json()
            move = view["move"]
    if move is not None and move["state"] == "canary":
        console.print(
            "[yellow]canary paused[/]: compare the versions below, then"
            " `points upgrade --promote` or `--rollback`"
        )
    elif move is not None:
        console.print("[yellow]still moving[/]: follow it with `points topology`")
    return view


@app.command()
def topology(
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """Shards, the slots each owns, the node each runs on, and the move in progress."""
    client = _api_client(url, key)
    with _reaching(client.base_url), client:
        answer = client.get("/v1/admin/topology")
    if answer.status_code != 200:
        console.print(f"[red]refused[/] ({answer.status_code}): {answer.text}")
        raise typer.Exit(1)
    console.print(topology_table(answer.json()))


def topology_table(view: dict[str, Any]) -> Table:
    table = Table("kind", "shard", "slots", "version", "node", "pid")
    for kind in ("account_shards", "reward_shards"):
        for shard in view[kind]:
            node = shard["node_ip"] or "(restarting)"
            if shard["node_id"]:
                node = f"{node} ({shard['node_id'][:8]})"
            table.add_row(
                kind.removesuffix("_shards"),
                str(shard["index"]),
                str(shard["slots"]),
                shard.get("version") or "?",
                node,
                str(shard["pid"] or ""),
            )
    rates = [
        f"{kind.removesuffix('_shards')} {v['version']}: {v['slots']} slots,"
        f" error rate {100 * v['error_rate']:.2f}% of {v['ops'] + v['failed']}"
        for kind, versions in view.get("versions", {}).items()
        for v in versions
    ]
    move = view.get("move")
    if len(rates) > 2:  # two releases side by side (a canary)
        table.caption = "; ".join(rates)
    if move is not None:
        accounts, rewards = move["account_shards"], move["reward_shards"]
        state = "canary paused" if move["state"] == "canary" else "moving"
        table.caption = (table.caption or "") + (
            f"\n{state}: {move['slots_moved']}/{move['slots_total']} slots, account shards"
            f" {accounts['from']} -> {accounts['to']}, reward shards"
            f" {rewards['from']} -> {rewards['to']}"
        )
    return table


def _where(shard: dict[str, Any]) -> str:
    """Where a shard runs, as its ping says (node address and process)."""
    if "node_ip" not in shard:
        return ""
    return f"; on node {shard['node_ip']} ({str(shard.get('node_id', ''))[:8]}), pid {shard['pid']}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.split("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


if __name__ == "__main__":
    app()
