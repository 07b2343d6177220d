"""deploy/ stays true to the code: the compose file and every Kubernetes manifest parse, name the
services that exist, set only real settings with values that pass `load_settings`, run only
`botpulse` subcommands the CLI has, and probe routes the services serve.

No Docker engine or cluster runs here: these tests read the files, they start no container.
"""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from botpulse.cli import build_parser
from botpulse.runtime.clickhouse import Store
from botpulse.runtime.settings import Settings, SettingsError, env_name, load_settings
from botpulse.runtime.settings import check_settings as check_worker_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"

SETTING_ENV = {env_name(f) for f in Settings.__struct_fields__}
BOTPULSE_ROLES = {"gateway", "worker", "query", "alerts", "migrate"}


def _is_setting_like(name: str) -> bool:
    """Names botpulse would read: anything BOTPULSE_-prefixed, and the two unprefixed URLs."""
    return name.startswith("BOTPULSE_") or name in {"CLICKHOUSE_URL", "REDIS_URL"}


# --- helpers ---------------------------------------------------------------------------------


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Compose's `${VAR:-default}` with an empty shell: every variable takes its default."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(2) or "", value).replace("$$", "$")
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def _env_dict(env: Any) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, list):  # compose also allows ["KEY=value", ...]
        return dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dockerfile_env() -> dict[str, str]:
    """The ENV lines of deploy/Dockerfile (`ENV A=1 \\ B=2` form)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _deployable(env: Mapping[str, str]) -> dict[str, str]:
    """`env` as deployed once the Secret's placeholders are replaced: the shipped admin token
    must stop start-up until it is (a real token does not)."""
    env = dict(env)
    if "CHANGE-ME" in env.get("BOTPULSE_ADMIN_TOKEN", ""):
        with pytest.raises(SettingsError, match="placeholder"):
            load_settings(env)
        env["BOTPULSE_ADMIN_TOKEN"] = secrets.token_urlsafe(32)
    return env


def _check_settings(where: str, env: Mapping[str, str]) -> Settings:
    unknown = sorted(k for k in env if _is_setting_like(k) and k not in SETTING_ENV)
    assert not unknown, f"{where}: not settings of runtime/settings.py: {unknown}"
    try:
        return load_settings(_deployable(env))
    except SettingsError as exc:
        pytest.fail(f"{where}: {exc}")


def _check_role_settings(where: str, role: str, settings: Settings) -> None:
    """Checks a service makes at start-up beyond `load_settings` (the worker refuses a claim
    threshold that could steal a live batch)."""
    if role == "worker":
        try:
            check_worker_settings(settings)
        except SettingsError as exc:
            pytest.fail(f"{where}: {exc}")


def _check_command(where: str, argv: list[str]) -> str:
    """`argv` as given to the `botpulse` entrypoint parses with the real CLI; returns the role."""
    assert argv, f"{where}: no command"
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `botpulse {' '.join(argv)}` is not a valid botpulse command")
    return argv[0]


def _app_for(role: str, settings: Settings, store: Store) -> web.Application:
    if role == "gateway":
        from botpulse.ingest.app import build_app as gateway_app

        return gateway_app(settings)
    if role == "query":
        from botpulse.query.app import build_app as query_app

        return query_app(settings, store)
    raise AssertionError(f"{role} serves no HTTP: nothing to probe")


async def _assert_route(where: str, app: web.Application, path: str) -> None:
    """`GET path` is served by a route registered for exactly that path (a catch-all such as the
    gateway's JSON 404 for unknown paths does not count)."""
    match = await app.router.resolve(make_mocked_request("GET", path, app=app))
    route = match.route
    found = match.http_exception is None and route.method == "GET" and route.resource is not None
    assert found and route.resource.canonical == path, f"{where}: GET {path} is not a route of this service"


def _role_port(role: str, settings: Settings) -> int:
    return settings.gateway_port if role == "gateway" else settings.query_port


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_one_image_for_every_service() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["botpulse"\]$', text, re.MULTILINE)
    assert re.search(r"pip install \"?\.\[speed\]\"?", text)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    _check_command("Dockerfile CMD", yaml.safe_load(cmd.group(1)))
    _check_settings("Dockerfile ENV", dockerfile_env())


def test_dockerfile_copies_every_package() -> None:
    """The image is built from explicit COPYs: each package pyproject installs, its readme, and
    nothing the build context leaves out."""
    text = (DEPLOY / "Dockerfile").read_text()
    copied = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        copied |= set(line.split()[:-1])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed = {"pyproject.toml", pyproject["project"]["readme"]} | packages
    assert needed <= copied, sorted(needed - copied)
    for source in copied:
        assert (ROOT / source).exists(), source
    ignored = set((DEPLOY / "Dockerfile.dockerignore").read_text().split())
    assert not copied & ignored


# --- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def _botpulse_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, svc in compose["services"].items():
        if str(svc.get("image", "")).startswith("botpulse:") or "build" in svc:
            yield name, svc


def test_compose_file_follows_the_compose_spec() -> None:
    """The Compose specification's own JSON schema (vendored by check-jsonschema, no network)."""
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(DEPLOY / "docker-compose.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_names_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"gateway", "worker", "query", "migrate", "clickhouse", "redis"} <= set(services)
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["redis"]["image"].startswith("redis:")
    assert {name for name, _ in _botpulse_services(compose)} == BOTPULSE_ROLES
    for name, svc in _botpulse_services(compose):
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name


def test_compose_redis_keeps_the_stream(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    argv = command if isinstance(command, list) else shlex.split(command)
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"


def test_compose_workers_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a fixed host port would stop `--scale worker=N`"
    assert worker.get("stop_grace_period"), "workers need time to flush on SIGTERM"


def test_compose_services_use_real_settings_and_commands(compose: dict[str, Any]) -> None:
    image_env = dockerfile_env()
    for name, svc in _botpulse_services(compose):
        env = {**image_env, **_env_dict(svc.get("environment"))}
        settings = _check_settings(f"compose service {name}", env)
        assert settings.redis_url and settings.redis_url.startswith("redis://redis:"), name
        assert settings.clickhouse_url.startswith("http://") and "@clickhouse:8123" in settings.clickhouse_url
        role = _check_command(f"compose service {name}", svc["command"])
        _check_role_settings(f"compose service {name}", role, settings)
        assert role == name
        if name != "migrate":
            assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert compose["services"]["migrate"]["restart"] == "no"


def test_compose_clickhouse_credentials_match(compose: dict[str, Any]) -> None:
    ch_env = _env_dict(compose["services"]["clickhouse"]["environment"])
    url = _env_dict(compose["services"]["query"]["environment"])["CLICKHOUSE_URL"]
    assert url.startswith(f"http://{ch_env['CLICKHOUSE_USER']}:{ch_env['CLICKHOUSE_PASSWORD']}@")


async def test_compose_healthchecks_hit_real_routes(compose: dict[str, Any], store: Store) -> None:
    image_env = dockerfile_env()
    checked = set()
    for name, svc in _botpulse_services(compose):
        check = svc.get("healthcheck")
        if not check:
            continue
        text = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", text)
        assert url, f"{name}: healthcheck does not call the service over HTTP"
        settings = load_settings({**image_env, **_env_dict(svc.get("environment"))})
        role = svc["command"][0]
        assert int(url.group(1)) == _role_port(role, settings), f"{name}: healthcheck port"
        await _assert_route(f"compose {name}", _app_for(role, settings, store), url.group(2))
        checked.add(name)
    assert checked == {"gateway", "query"}


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in docs, f"{key} defined twice"
                docs[key] = doc
    return docs


def _pod_specs(manifests: dict[tuple[str, str], dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for (kind, name), doc in manifests.items():
        if kind in {"Deployment", "Job"}:
            yield f"{kind}/{name}", doc["spec"]["template"]["spec"]


def _container_env(
    manifests: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(manifests[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            env.update(manifests[("Secret", source["secretRef"]["name"])]["stringData"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "")
    return env


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert [i["name"] for i in kustomization["images"]] == ["botpulse"]


def test_k8s_has_every_piece(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = set(manifests)
    for role in ("gateway", "worker", "query", "alerts"):
        assert ("Deployment", f"botpulse-{role}") in kinds
    assert ("Job", "botpulse-migrate") in kinds
    assert ("Service", "botpulse-gateway") in kinds and ("Service", "botpulse-query") in kinds
    hpa = manifests[("HorizontalPodAutoscaler", "botpulse-worker")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "botpulse-worker",
    }
    secret = manifests[("Secret", "botpulse-secrets")]["stringData"]
    assert {"BOTPULSE_ADMIN_TOKEN", "CLICKHOUSE_URL"} <= set(secret)


def test_k8s_migrations_can_be_applied_first(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    """deploy/kubernetes/README.md applies `-l 'app.kubernetes.io/component in (config,migrate)'`
    before the services: that selector must pick exactly the configuration and the Job."""
    picked = {
        key
        for key, doc in manifests.items()
        if doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") in {"config", "migrate"}
    }
    expected = {("ConfigMap", "botpulse-config"), ("Secret", "botpulse-secrets"), ("Job", "botpulse-migrate")}
    assert picked == expected
    assert "app.kubernetes.io/component in (config,migrate)" in (K8S / "README.md").read_text()


def test_k8s_config_values_are_strings_and_settings(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = manifests[("ConfigMap", "botpulse-config")]["data"]
    secret = manifests[("Secret", "botpulse-secrets")]["stringData"]
    for where, data in (("ConfigMap", config), ("Secret", secret)):
        # The API server rejects non-string values in ConfigMap data / Secret stringData.
        assert all(isinstance(v, str) for v in data.values()), f"{where}: quote every value"
        assert set(data) <= SETTING_ENV, f"{where}: {sorted(set(data) - SETTING_ENV)}"
    _check_settings("ConfigMap + Secret", {**config, **secret})


def test_k8s_containers_run_real_commands_with_real_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    roles = set()
    image_env = dockerfile_env()
    for where, spec in _pod_specs(manifests):
        for container in spec["containers"]:
            assert container["image"].split(":")[0] == "botpulse", where
            assert "command" not in container, f"{where}: keep the image's botpulse entrypoint"
            role = _check_command(where, container["args"])
            settings = _check_settings(where, {**image_env, **_container_env(manifests, container)})
            _check_role_settings(where, role, settings)
            roles.add(role)
    assert roles == BOTPULSE_ROLES


def test_k8s_graceful_termination(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = manifests[("ConfigMap", "botpulse-config")]["data"]
    settings = load_settings(config)
    for role in ("gateway", "worker", "query", "alerts"):
        grace = manifests[("Deployment", f"botpulse-{role}")]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        assert grace >= 15, role
    worker_grace = manifests[("Deployment", "botpulse-worker")]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    # A worker flushes its last batch on SIGTERM: one batch interval plus one insert must fit.
    assert worker_grace > settings.batch_ms / 1000 + settings.insert_timeout_s


def test_k8s_service_links_cannot_shadow_settings(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Kubernetes injects <SERVICE>_PORT=tcp://… for every Service; `botpulse-gateway` would set
    BOTPULSE_GATEWAY_PORT. Pods must turn service links off."""
    injected = set()
    for kind, name in manifests:
        if kind == "Service":
            prefix = name.upper().replace("-", "_")
            injected |= {f"{prefix}_PORT", f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT"}
    assert injected & SETTING_ENV, "the check below is vacuous if no Service name collides"
    for where, spec in _pod_specs(manifests):
        assert spec.get("enableServiceLinks") is False, where


def test_k8s_services_select_their_pods(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    for role in ("gateway", "query"):
        service = manifests[("Service", f"botpulse-{role}")]
        template = manifests[("Deployment", f"botpulse-{role}")]["spec"]["template"]
        selector = service["spec"]["selector"]
        assert selector.items() <= template["metadata"]["labels"].items(), role
        port_names = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, role


async def test_k8s_probes_hit_real_routes(
    manifests: dict[tuple[str, str], dict[str, Any]], store: Store
) -> None:
    image_env = dockerfile_env()
    probed = set()
    for role in ("gateway", "query"):
        spec = manifests[("Deployment", f"botpulse-{role}")]["spec"]["template"]["spec"]
        for container in spec["containers"]:
            settings = load_settings(_deployable({**image_env, **_container_env(manifests, container)}))
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["http"] == _role_port(role, settings), f"{role}: containerPort vs setting"
            app = _app_for(role, settings, store)
            for kind in ("readinessProbe", "livenessProbe"):
                probe = container[kind]["httpGet"]
                port = ports.get(probe["port"], probe["port"])
                assert port == _role_port(role, settings), f"{role} {kind} port"
                await _assert_route(f"{role} {kind}", app, probe["path"])
                probed.add((role, kind))
    assert len(probed) == 4


def test_every_deployed_service_has_the_settings_its_command_requires(
    compose: dict[str, Any], manifests: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """What `botpulse gateway|worker|query|alerts` check at start-up (`load_settings(roles=…)`: REDIS_URL
    and the other per-service rules) holds for every compose service and Kubernetes container."""
    image_env = dockerfile_env()
    deployed: list[tuple[str, list[str], dict[str, str]]] = [
        (f"compose service {name}", svc["command"], {**image_env, **_env_dict(svc.get("environment"))})
        for name, svc in _botpulse_services(compose)
    ]
    for where, spec in _pod_specs(manifests):
        for container in spec["containers"]:
            deployed.append((where, container["args"], {**image_env, **_container_env(manifests, container)}))
    roles = set()
    for where, argv, env in deployed:
        role = _check_command(where, argv if isinstance(argv, list) else shlex.split(argv))
        roles.add(role)
        try:
            load_settings(
                _deployable(env), roles=(role,) if role in ("gateway", "worker", "query", "alerts") else ()
            )
        except SettingsError as exc:
            pytest.fail(f"{where}: {exc}")
    assert {"gateway", "worker", "query", "alerts"} <= roles
