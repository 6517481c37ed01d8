"""The Ray launcher: 1 compute + 2 attention actors placed by device type on a local cluster give the
spawning launcher's tokens, also when an attention actor is killed mid-run and replaced."""

from __future__ import annotations

import json

import pytest

from reference_impl.errors import ConfigError
from reference_impl.lamina import LaminaConfig, generate_lamina
from tests.reference_impl.test_lamina import REQUESTS
from tests.reference_impl.tiny_models import build_tiny_model

ray_launch = pytest.importorskip("reference_impl.lamina.ray_launch", reason="Ray is not installed")
pytest.importorskip("ray", reason="Ray is not installed")

DEVICES = {"compute": "H100", "attention": "H20"}  # tests/ray_support.py: the head has H100, the node H20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model("llama31-gqa", tmp_path_factory.mktemp("ray_model") / "m", seed=0))


@pytest.fixture(scope="module")
def spawned(model_dir) -> list[tuple[int, ...]]:
    """The spawning launcher's tokens (processes over gloo), the reference for the Ray launcher."""
    run = generate_lamina(LaminaConfig(model_dir=model_dir, attention_workers=2, ignore_eos=True), REQUESTS)
    return [c.output_ids for c in run.completions]


def test_bundles_name_each_ranks_device_type():
    cfg = LaminaConfig(model_dir="unused", compute_workers=1, attention_workers=2, launcher="ray")
    placement = ray_launch.RayPlacement(devices=DEVICES)
    assert ray_launch.bundles(cfg, placement) == [
        {"CPU": 1.0, "H100": 1.0},  # rank 0: compute
        {"CPU": 1.0, "H20": 1.0},  # ranks 1, 2: attention
        {"CPU": 1.0, "H20": 1.0},
    ]
    assert ray_launch.bundles(cfg, ray_launch.RayPlacement()) == [{"CPU": 1.0}] * 3


@pytest.mark.parametrize(
    "address, devices, message",
    [
        ("127.0.0.1", None, "HOST:PORT"),
        (None, "compute=H100,memory=H20", "roles compute, attention"),
        (None, "compute=H100,compute=H200", "ROLE=RESOURCE"),
    ],
)
def test_bad_placement_options_are_one_line_errors(address, devices, message):
    with pytest.raises(ConfigError, match=message):
        ray_launch.RayPlacement.from_options(address, devices)


def test_generate_on_ray_gives_the_spawning_launchers_tokens(
    ray_cluster, model_dir, spawned, tmp_path, capsys
):
    from lamina_bench.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": list(r.prompt_ids), "max_new_tokens": r.max_new_tokens})
                               + "\n" for r in REQUESTS))  # fmt: skip
    argv = ["generate", "--system", "lamina", "--launcher", "ray", "--ray-address", ray_cluster.address,
            "--ray-devices", "compute=H100,attention=H20", "--model-dir", model_dir, "--prompts", str(prompts),
            "--attention-workers", "2", "--ignore-eos", "--json"]  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [tuple(line["output_ids"]) for line in lines[:-1]] == spawned
    assert lines[-1]["summary"]["requests"] == len(REQUESTS)


def test_a_killed_attention_actor_is_replaced_and_tokens_do_not_change(ray_cluster, model_dir, spawned):
    cfg = LaminaConfig(
        model_dir=model_dir, attention_workers=2, ignore_eos=True, launcher="ray", kill_at=(2, 3)
    )
    placement = ray_launch.RayPlacement(ray_cluster.address, DEVICES)
    run = ray_launch.generate_lamina_ray(cfg, REQUESTS, placement)  # rank 2's actor killed in decode step 3
    assert [c.output_ids for c in run.completions] == spawned
    (event,) = run.recoveries
    assert (event.dead_ranks, event.roles) == ((2,), ("attention",))
    assert event.rebuilt_tokens > 0
    assert [w.rank for w in run.workers] == [0, 1, 2]  # the replacement reports as rank 2


def test_a_cluster_without_the_device_types_is_a_config_error(ray_cluster, model_dir, monkeypatch):
    monkeypatch.setattr(ray_launch, "PLACEMENT_TIMEOUT_S", 3.0)
    cfg = LaminaConfig(model_dir=model_dir, attention_workers=2, launcher="ray")
    placement = ray_launch.RayPlacement(ray_cluster.address, {"compute": "H100", "attention": "MI300X"})
    with pytest.raises(ConfigError, match="no room for the run's 3 workers"):
        ray_launch.generate_lamina_ray(cfg, REQUESTS, placement)
