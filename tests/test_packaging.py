"""
The Docker image, compose file, Prometheus config and wheel, checked without Docker.

Docker does not run on the build machines, so these tests read the files and
hold them to the code: the ports, paths and environment names they use must
be the ones the gateway has.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import typing
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.app import create_app
from gateway.config import CLASSIC_ENV, ServerSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORT = ServerSettings.model_fields["port"].default


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile, each with its (KEYWORD, arguments) lines."""
    stages: list[Stage] = []
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, " ".join(args.split())))
    return stages


def parse_env(args: str) -> dict[str, str]:
    """``ENV A=1 B=2`` (or the old ``ENV A 1``) as a dict."""
    words = shlex.split(args)
    if "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def setting_exists(name: str) -> bool:
    """Whether an environment variable name maps onto a real settings field."""
    if name in CLASSIC_ENV:
        return True
    if not name.startswith("TALLYGATE_"):
        return False
    annotation: Any = Settings
    for part in name.removeprefix("TALLYGATE_").lower().split("__"):
        if typing.get_origin(annotation) is dict:
            # A table of named entries ([upstreams.<name>]): any name will do.
            annotation = typing.get_args(annotation)[1]
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        info = annotation.model_fields.get(part)
        if info is None:
            return False
        annotation = info.annotation
    return True


def app_routes() -> set[tuple[str, str]]:
    app = create_app(load_settings(environ={}))
    return {(r.method, r.resource.canonical) for r in app.router.routes()}


def app_paths() -> set[str]:
    return {path for _, path in app_routes()}


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_setting_exists_knows_real_and_made_up_names() -> None:
    assert setting_exists("TALLYGATE_SERVER__PORT")
    assert setting_exists("DATABASE_URL")
    assert setting_exists("TALLYGATE_UPSTREAMS__OPENAI__API_KEY")
    assert not setting_exists("TALLYGATE_UPSTREAMS__OPENAI__API_KEY__X")
    assert not setting_exists("TALLYGATE_UPSTREAMS__OPENAI__APIKEY")
    assert not setting_exists("TALLYGATE_SERVER__PROT")
    assert not setting_exists("TALLYGATE_NOSUCH__PORT")
    assert not setting_exists("PORT")


def test_parse_dockerfile_joins_continued_lines() -> None:
    text = "FROM a AS one\nRUN x \\\n    && y\n# note\nFROM b\nUSER me\n"

    parsed = parse_dockerfile(text)

    assert [(s.image, s.name) for s in parsed] == [("a", "one"), ("b", None)]
    assert parsed[0].args("RUN") == ["x && y"]
    assert parsed[1].args("USER") == ["me"]


def test_image_builds_the_dashboard_with_node_and_runs_on_slim_python(
    stages: list[Stage],
) -> None:
    assert stages[0].image.startswith("node:20")
    assert any("npm ci" in run for run in stages[0].args("RUN"))
    assert any("npm run build" in run for run in stages[0].args("RUN"))
    assert stages[-1].image == "python:3.11-slim"
    assert any("pip install" in run and ".whl" in run for run in stages[-1].args("RUN"))


def test_image_copies_the_dashboard_from_where_vite_writes_it(
    stages: list[Stage],
) -> None:
    vite = (ROOT / "dashboard" / "vite.config.ts").read_text()
    out_dir = re.search(r'outDir:\s*"([^"]+)"', vite)[1]
    workdir = Path(stages[0].args("WORKDIR")[-1])
    built = os.path.normpath(workdir / out_dir)

    copies = [c for s in stages for c in s.args("COPY") if c.startswith("--from=")]

    assert any(
        c.split()[0] == f"--from={stages[0].name}" and c.split()[1] == built
        for c in copies
    )


def test_image_copies_only_what_exists_from_earlier_stages(
    stages: list[Stage],
) -> None:
    names = set()
    for stage in stages:
        for copy in stage.args("COPY"):
            words = copy.split()
            if words[0].startswith("--from="):
                assert words[0].removeprefix("--from=") in names
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
        if stage.name:
            names.add(stage.name)


def test_image_runs_as_a_user_that_is_not_root(stages: list[Stage]) -> None:
    users = stages[-1].args("USER")

    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_image_keeps_its_data_in_a_volume(stages: list[Stage]) -> None:
    env: dict[str, str] = {}
    for args in stages[-1].args("ENV"):
        env.update(parse_env(args))

    assert env["TALLYGATE_DATABASE__DATA_DIR"] == "/data"
    assert env["TALLYGATE_SERVER__HOST"] == "0.0.0.0"
    assert "/data" in stages[-1].args("VOLUME")
    assert all(setting_exists(name) for name in env if name.startswith("TALLY"))


def test_image_reads_a_config_file_mounted_in_its_working_directory(
    stages: list[Stage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text("[retention]\nmonths = 7\n")
    monkeypatch.chdir(tmp_path)

    settings = load_settings(environ={})

    assert stages[-1].args("WORKDIR")[-1] == "/config"
    assert settings.retention.months == 7


def test_image_exposes_the_default_port(stages: list[Stage]) -> None:
    assert stages[-1].args("EXPOSE") == [str(DEFAULT_PORT)]


def test_image_healthcheck_asks_a_real_route_with_python_only(
    stages: list[Stage],
) -> None:
    (healthcheck,) = stages[-1].args("HEALTHCHECK")
    command = healthcheck.split("CMD ", 1)[1]
    argv = yaml.safe_load(command)  # the exec form is a JSON array

    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")
    assert "/healthz" in argv[2]
    assert f"'{DEFAULT_PORT}'" in argv[2]
    assert "/healthz" in app_paths()


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())

    assert {".git", ".venv", "dashboard/node_modules", "gateway/static"} <= ignored


def test_compose_gateway_waits_for_a_healthy_postgres(compose: dict) -> None:
    services = compose["services"]

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    depends = services["gateway"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"


def test_compose_maps_the_gateway_port(compose: dict) -> None:
    ports = compose["services"]["gateway"]["ports"]

    assert [p.split(":")[-1] for p in ports] == [str(DEFAULT_PORT)]


def test_compose_environment_names_exist_in_the_settings(compose: dict) -> None:
    environment = compose["services"]["gateway"]["environment"]

    unknown = [name for name in environment if not setting_exists(name)]

    assert unknown == []


def test_compose_environment_builds_valid_settings(
    compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values compose passes (its ${VAR:-default} defaults) load cleanly."""
    default = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")
    environ = {
        name: default.sub(lambda m: m[1], str(value))
        for name, value in compose["services"]["gateway"]["environment"].items()
    }
    for name, value in environ.items():
        if name.startswith("TALLYGATE_"):
            monkeypatch.setenv(name, value)

    settings = load_settings(environ=environ)

    assert settings.database.url is not None
    assert "@postgres:5432/" in settings.database.url.get_secret_value()
    assert settings.budgets.daily_usd is None


def test_compose_database_url_matches_the_postgres_service(compose: dict) -> None:
    postgres = compose["services"]["postgres"]["environment"]
    url = compose["services"]["gateway"]["environment"]["TALLYGATE_DATABASE__URL"]

    user = postgres["POSTGRES_USER"]
    assert url.startswith(f"postgresql://{user}:")
    assert url.endswith(f"@postgres:5432/{postgres['POSTGRES_DB']}")


def test_compose_prometheus_is_optional_and_uses_the_scrape_config(
    compose: dict,
) -> None:
    prometheus = compose["services"]["prometheus"]

    assert prometheus["profiles"] == ["monitoring"]
    sources = [v.split(":")[0] for v in prometheus["volumes"]]
    assert "./deploy/prometheus.yml" in sources
    assert (ROOT / "deploy" / "prometheus.yml").is_file()


def test_prometheus_scrapes_the_gateway_metrics_route() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())

    (job,) = config["scrape_configs"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"gateway:{DEFAULT_PORT}"]
    assert job["metrics_path"] in app_paths()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, as the Docker image builds it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--wheel-dir", str(out), str(ROOT)],
        check=True, timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    (built,) = out.glob("tallygate-*.whl")
    return built


def test_wheel_carries_the_migrations_and_the_built_dashboard(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    migrations = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert migrations
    assert {f"gateway/sql/{name}" for name in migrations} <= names
    if (ROOT / "gateway" / "static" / "dashboard" / "index.html").is_file():
        assert "gateway/static/dashboard/index.html" in names


def test_installed_wheel_finds_its_migrations(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)

    found = subprocess.run(
        [sys.executable, "-c",
         "from gateway import db; print(db.find_migrations_dir());"
         "print(len(db.list_migrations()))"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip

    assert Path(found[0]) == site / "gateway" / "sql"
    assert int(found[1]) == len(list((ROOT / "sql").glob("*.sql")))


def test_readme_names_only_routes_the_gateway_has() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`(GET|POST) (/[^`?\s]*)", readme))

    missing = named - app_routes()

    assert len(named) >= 8
    assert missing == set()


def test_readme_links_point_at_files_in_the_repo() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#:]+)\)", readme)

    assert links
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_readme_test_command_is_the_ci_script() -> None:
    readme = (ROOT / "README.md").read_text()
    script = (ROOT / ".ci" / "run").read_text()

    assert "bash .ci/run" in readme
    assert "set -euo pipefail" in script
    assert "-m pytest tests" in script
    assert "npm test" in script
    # pytest's "no tests collected" must not pass as success.
    assert '"$pytest_status" -eq 5' in script
