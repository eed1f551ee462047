"""`points`: run the service (`up`), apply migrations (`migrate`), check it (`status`)."""

import contextlib
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from serve_app.settings import Settings, load_settings

app = typer.Typer(help="Points: loyalty points service on Ray.", no_args_is_help=True)
programs_app = typer.Typer(help="Programs: create one from a template.", no_args_is_help=True)
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
    settings: Settings = load_settings()
    base = url or f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {_admin_key(settings, key)}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
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
        console.print(f"[red]down[/]: {base} does not answer ({type(exc).__name__})")
        raise typer.Exit(1) from exc
    version = rules.json()["version"]
    console.print(
        f"program [bold]{program_id}[/] ({'created' if program.status_code == 201 else 'updated'})"
        f" from template {template}: policy version {program.json()['policy_version']},"
        f" rule set version {version} ({len(chosen['rules'])} rules)"
    )
    console.print(chosen["description"])


console = Console()

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
    """Run the whole service in the foreground until Ctrl-C or SIGTERM."""
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
    try:
        with console.status("starting PostgreSQL and Redis…"):
            services = runtime.start_services(settings)
        with console.status("applying migrations…"):
            admin_key, generated = runtime.prepare_database(settings, services.database_url)
        with console.status("starting Ray…"):
            started_ray = runtime.start_ray(settings)
        catch_signals()  # ray.init installs its own SIGTERM handler (sys.exit): take it back
        if stop.is_set():
            return
        with console.status("deploying the Serve application…"):
            base_url = runtime.deploy(settings, services.database_url, services.redis_url)
        console.print(f"[bold green]Points is up[/] at {base_url}")
        console.print(f"  API docs:   {base_url}/docs")
        console.print(f"  Database:   {_redact(services.database_url)}")
        console.print(f"  Redis:      {services.redis_url}")
        if admin_key:
            note = " (new: shown once here, saved to " if generated else " (from "
            source = "POINTS_ADMIN_KEY" if settings.admin_key else str(settings.admin_key_file)
            console.print(f"  Admin key:  {admin_key}{note}{source})")
        console.print("Press Ctrl-C to stop.")
        stop.wait()
    finally:
        console.print("stopping…")
        with contextlib.suppress(Exception):
            runtime.stop_ray(settings, started_ray, reap=False)
        if services is not None:
            services.stop()
        leftovers = runtime.reap_descendants()
        console.print(
            "stopped"
            + (" (local Ray head shut down)" if started_ray else "")
            + (f"; ended {leftovers} leftover processes" if leftovers else "")
        )


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
            f" {int(shard['commit_failures'])} failed commits"
        )
    for shard in body.get("reward_shards", []):
        console.print(
            f"reward shard {shard['reward_shard']}: {shard['rewards_loaded']} rewards loaded,"
            f" {shard['sagas_in_flight']} redemptions in flight"
        )


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
