"""One read guard for every /api/ GET, and secrets in command tasks' env masked (issue 23).

Before, /api/config was registered beside the console's routes without its
guard: on loopback it answered a foreign Host (DNS rebinding), off loopback it
needed no token, and it showed command tasks' env values verbatim, as did
check-config.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.console import TOKEN, call, console_config
from tests.support.daemon import DaemonFactory

AWS_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
MARKED = "marked-secret-value-1234"
URL_PASSWORD = "url-password-5678"
# Every data route today, one that may be added later, and one that does not exist.
GUARDED = ("/api/config", "/api/running", "/api/queue", "/api/dead", "/api/outcomes", "/api/x")
COMMAND_TASK = f"""
[tasks.deploy]
command = ["true"]
secret_env = ["DEPLOY_NOTE"]
[tasks.deploy.env]
AWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"
DEPLOY_NOTE = "{MARKED}"
LC_ALL = "C"
UPSTREAM = "https://deploy:{URL_PASSWORD}@example.com/x"
"""
SECRETS = (AWS_SECRET, MARKED, URL_PASSWORD)


def with_command_task(config: Path) -> Path:
    config.write_text(config.read_text() + COMMAND_TASK)
    return config


def test_every_api_read_refuses_a_foreign_host(factory: DaemonFactory) -> None:
    daemon = factory.start(console_config(factory, actions=False))
    for path in GUARDED:
        foreign = call(daemon, "GET", path, headers={"Host": f"rebind.example:{daemon.port}"})
        assert foreign.code == 403, (path, foreign)
    assert call(daemon, "GET", "/api/config").code == 200
    for public in ("/api/status", "/api/console"):
        assert call(daemon, "GET", public, headers={"Host": "rebind.example"}).code == 200


def test_every_api_read_off_loopback_needs_the_token(factory: DaemonFactory) -> None:
    daemon = factory.start(console_config(factory, actions=False, host="0.0.0.0"))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in GUARDED:
        assert call(daemon, "GET", path).code == 401, path
    assert call(daemon, "GET", "/api/config", headers=bearer).code == 200
    assert call(daemon, "GET", "/api/x", headers=bearer).code == 404
    assert call(daemon, "GET", "/api/status").code == 200


def test_secret_env_values_are_masked_wherever_the_config_is_shown(
    factory: DaemonFactory,
) -> None:
    config = with_command_task(console_config(factory, actions=False))
    shown = factory.cli("check-config", config=config)
    assert shown.returncode == 0, shown.stderr
    for secret in SECRETS:
        assert secret not in shown.stdout + shown.stderr
    assert 'LC_ALL = "C"' in shown.stdout and "https://deploy:***@example.com/x" in shown.stdout

    daemon = factory.start(config)
    answer = call(daemon, "GET", "/api/config")
    assert answer.code == 200
    env = answer.body["effective"]["tasks"]["deploy"]["env"]
    assert env == {
        "AWS_SECRET_ACCESS_KEY": "***",
        "DEPLOY_NOTE": "***",
        "LC_ALL": "C",
        "UPSTREAM": "https://deploy:***@example.com/x",
    }
    status = json.dumps(daemon.status())
    for secret in SECRETS:
        assert secret not in status and secret not in daemon.log()


def test_secret_env_must_name_a_variable_of_env(factory: DaemonFactory) -> None:
    config = console_config(factory, actions=False)
    config.write_text(
        config.read_text() + '\n[tasks.deploy]\ncommand = ["true"]\nsecret_env = ["NOPE"]\n'
    )
    refused = factory.cli("check-config", config=config)
    assert refused.returncode == 78
    assert "tasks.deploy.secret_env: names NOPE, not set in env" in refused.stderr


def test_reload_dry_run_sends_the_console_token_off_loopback(factory: DaemonFactory) -> None:
    """`reload --dry-run` reads the guarded /api/config: with the config's token it may."""
    config = console_config(factory, actions=False, host="0.0.0.0")
    daemon = factory.start(config)
    dry = factory.cli("reload", "--dry-run", "--pid", str(daemon.pid), config=config)
    assert dry.returncode == 0, dry.stderr
    assert "no change: a reload would do nothing" in dry.stdout
