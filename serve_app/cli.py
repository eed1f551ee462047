"""`points`: run the service (`up`), apply migrations (`migrate`), check it (`status`), create
and list programs (`programs create`, `programs list`)."""

import contextlib
import json
import signal
import socket
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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


class ListRefused(Exception):
    """The service answered a list request with something other than a page."""


def fetch_programs(
    client: httpx.Client, page_size: int = PROGRAMS_PAGE_SIZE
) -> list[dict[str, Any]]:
    """Every program, following next_cursor from the first page to the last."""
    assert 0 < page_size <= PROGRAMS_PAGE_SIZE
    programs: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(PROGRAMS_PAGES_MAX):
        params: dict[str, str | int] = {"limit": page_size}
        if cursor is not None:
            params["cursor"] = cursor
        answer = client.get("/v1/programs", params=params)
        if answer.status_code != 200:
            raise ListRefused(f"{answer.status_code}: {answer.text}")
        try:
            page = answer.json()
            programs.extend(page["items"])
            cursor = page["next_cursor"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ListRefused(f"not a page of programs: {answer.text[:200]}") from exc
        if cursor is None:
            return programs
    raise ListRefused(f"still more after {PROGRAMS_PAGES_MAX} pages of {page_size}")


def programs_table(programs: list[dict[str, Any]]) -> Table:
    table = Table("id", "name", "created")
    for program in programs:
        # Names are the users' text, not Rich markup: "[b]" stays "[b]".
        table.add_row(escape(program["program_id"]), escape(program["name"]), program["created_at"])
    return table


@programs_app.command("list")
def programs_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the programs as a JSON array.")
    ] = False,
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
    key: Annotated[str | None, typer.Option(help="API key (default: the admin key).")] = None,
) -> None:
    """List every program (all pages): id, name and when it was created."""
    client = _api_client(url, key)
    try:
        with client:
            programs = fetch_programs(client)
    except httpx.HTTPError as exc:
        console.print(f"[red]down[/]: {client.base_url} does not answer ({type(exc).__name__})")
        raise typer.Exit(1) from exc
    except ListRefused as exc:
        console.print(f"[red]list refused[/] {exc}")
        raise typer.Exit(1) from exc
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
    try:
        with client:
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
    except httpx.HTTPError as exc:
        console.print(f"[red]down[/]: {client.base_url} does not answer ({type(exc).__name__})")
        raise typer.Exit(1) from exc
    version = rules.json()["version"]
    console.print(
        f"program [bold]{program_id}[/] ({'created' if program.status_code == 201 else 'updated'})"
        f" from template {template}: policy version {program.json()['policy_version']},"
        f" rule set version {version} ({len(chosen['rules'])} rules)"
    )
    console.print(chosen["description"])


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
    shards: Annotated[int | None, typer.Option(help="Account shard actors.")] = None,
    replicas: Annotated[int | None, typer.Option(help="HTTP ingress replicas.")] = None,
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
    stop = threading.Event()

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
            print_banner(
                console,
                base_url,
                services.database_url,
                services.redis_url,
                runtime.admin_key_note(admin_key, key_source, settings.admin_key_file),
            )
            # Until Ctrl-C / SIGTERM, or until the Ray cluster is gone (its head died):
            # then stop cleanly, before Ray ends this process on its own.
            cluster_gone = runtime.serve_until_stopped(stop)
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


def print_banner(
    out: Console, base_url: str, database_url: str, redis_url: str, admin_key_note: str
) -> None:
    """What `points up` prints once the service answers: where everything is."""
    out.print(f"[bold green]Points is up[/] at {base_url}")
    out.print(f"  API docs:   {base_url}/docs")
    out.print(f"  Database:   {_redact(database_url)}")
    out.print(f"  Redis:      {redis_url}")
    out.print(f"  Admin key:  {admin_key_note}")
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
    from db.embedded import EmbeddedPostgres
    from db.engine import libpq_url
    from db.engine import migrate as run_migrations

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    embedded = None
    url = settings.database_url
    if not url:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
    try:
        run_migrations(libpq_url(url))
        console.print("[green]migrations applied[/]")
    finally:
        if embedded is not None:
            embedded.stop()


@app.command()
def status(
    url: Annotated[str | None, typer.Option(help="Base URL of the service.")] = None,
) -> None:
    """Is the service up? Its shards, database and Redis."""
    settings: Settings = load_settings()
    base = url or f"http://{settings.host}:{settings.port}"
    try:
        health = httpx.get(f"{base}/healthz", timeout=3)
        ready = httpx.get(f"{base}/readyz", timeout=10)
    except httpx.HTTPError as exc:
        console.print(f"[red]down[/]: {base} does not answer ({type(exc).__name__})")
        raise typer.Exit(1) from exc
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
