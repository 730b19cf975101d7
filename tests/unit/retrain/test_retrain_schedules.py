"""The schedulers shipped in deploy/ call the real command: the CronJob's command line and the
Airflow DAG's are parsed by sluice's own parser (the DAG is imported when Airflow is installed,
otherwise compiled, and the function that builds its command is run)."""

from __future__ import annotations

import ast
import importlib.util
import shlex
from pathlib import Path

import yaml

from sluice.server.cli import _parser

ROOT = Path(__file__).resolve().parents[3]
CRONJOB = ROOT / "deploy" / "kubernetes" / "retrain-cronjob.yaml"
DAG = ROOT / "deploy" / "airflow" / "sluice_retrain_dag.py"


def _retrain_args(argv: list[str]):
    assert argv[0] == "sluice"
    args = _parser().parse_args(argv[1:])
    assert args.command == "retrain"
    return args


def test_the_cronjob_runs_sluice_retrain_once_at_a_time():
    manifest = yaml.safe_load(CRONJOB.read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "CronJob")
    spec = manifest["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    args = _retrain_args(container["command"] + container["args"])
    assert (args.model, args.url, str(args.model_repository), str(args.state_dir)) == (
        "digits", "sluice:8001", "/models", "/state")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/models", "/state"} <= mounts


def test_the_airflow_dag_runs_the_same_command():
    source = DAG.read_text()
    compile(source, str(DAG), "exec")  # a syntax error fails here, Airflow or not
    if importlib.util.find_spec("airflow") is not None:
        spec = importlib.util.spec_from_file_location("sluice_retrain_dag", DAG)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        commands = [task.bash_command for task in module.dag.tasks]
    else:
        # Without Airflow: run the module's plain definitions (no airflow import, no DAG block)
        tree = ast.parse(source)
        tree.body = [node for node in tree.body if not (
            isinstance(node, ast.With | ast.Try)
            or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow")))]
        namespace: dict = {}
        exec(compile(tree, str(DAG), "exec"), namespace)
        commands = [namespace["retrain_command"](m) for m in namespace["MODELS"]]
    assert commands
    for command in commands:
        args = _retrain_args(shlex.split(command))
        assert (args.model, args.url) == ("digits", "sluice:8001")
