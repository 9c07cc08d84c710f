"""workers/: vLLM flags, the CPU launch plan, its command and environment (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config.models import ModelsConfig, WorkerConfig, parse_models_config
from workers.cpu_plan import (
    SERVER_MODULE,
    adapter_commands,
    cpu_bindings,
    plan_launches,
    server_command,
    server_env,
    stand_in_seed,
    tinymodel_command,
)
from workers.flags import flag_errors, vllm_env, vllm_flags
from workers.local import LocalWorkers
from workers.tinymodel import STAMP_NAME, is_complete

TWO_MODELS = """
models:
  - name: big
    model: org/Big-70B
    tensor_parallel_size: 2
    pipeline_parallel_size: 2
    max_model_len: 8192
    gpu_memory_utilization: 0.85
    vllm_args: ["--max-num-seqs", "64", "--max-model-len", "4096"]
    workers:
      - {name: big-0, gpus: [0, 1, 2, 3], port: 8101}
  - name: small
    model: org/Small-1B
    workers:
      - {name: small-0, gpus: [4], port: 8102}
      - {name: small-remote, url: "http://10.0.0.5:8000/"}
"""


# Every launched worker publishes its KV-cache events (precise cache-aware routing reads them).
EVENTS_5557 = (
    '{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557",'
    '"topic":"kv-events"}'
)


def _config(text: str = TWO_MODELS) -> ModelsConfig:
    return parse_models_config(text)


def test_flags_carry_every_configured_setting_and_vllm_args_last() -> None:
    big = _config().models[0]
    assert vllm_flags(big, big.workers[0]) == [
        "--model", "org/Big-70B",
        "--served-model-name", "big",
        "--port", "8101",
        "--tensor-parallel-size", "2",
        "--pipeline-parallel-size", "2",
        "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.85",
        "--kv-events-config", EVENTS_5557,
        "--max-num-seqs", "64", "--max-model-len", "4096",
    ]  # fmt: skip


def test_flags_omit_unset_settings_and_single_stage_pipeline() -> None:
    small = _config().models[1]
    flags = vllm_flags(small, small.workers[0])
    assert flags == [
        "--model", "org/Small-1B",
        "--served-model-name", "small",
        "--port", "8102",
        "--tensor-parallel-size", "1",
        "--kv-events-config", EVENTS_5557,
    ]  # fmt: skip


def test_flags_take_model_path_host_and_port_from_the_caller() -> None:
    small = _config().models[1]
    flags = vllm_flags(small, small.workers[0], model_path="/models/s", host="0.0.0.0", port=8000)
    assert flags[:8] == [
        "--model", "/models/s",
        "--served-model-name", "small",
        "--host", "0.0.0.0",
        "--port", "8000",
    ]  # fmt: skip


def test_flags_refuse_an_attached_worker() -> None:
    small = _config().models[1]
    with pytest.raises(ValueError, match="small-remote"):
        vllm_flags(small, small.workers[1])


def test_plan_launches_only_launched_workers_with_overridden_ports(tmp_path: Path) -> None:
    launches = plan_launches(
        _config(), cache_dir=tmp_path, ports={"small-0": 9002}, cpus=[0, 1, 2, 3, 4, 5]
    )
    assert [(x.name, x.port) for x in launches] == [("big-0", 8101), ("small-0", 9002)]
    assert launches[1].model_dir == tmp_path / "small"
    assert launches[1].log_path == tmp_path / "logs" / "small-0.log"
    assert launches[1].base_url == "http://127.0.0.1:9002"


def test_plan_rejects_a_port_override_for_an_unknown_or_attached_worker(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="small-remote"):
        plan_launches(_config(), cache_dir=tmp_path, ports={"small-remote": 9000})


def test_plan_rejects_two_workers_on_one_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same port"):
        plan_launches(_config(), cache_dir=tmp_path, ports={"small-0": 8101})


def test_stand_in_seed_is_stable_and_differs_between_models() -> None:
    # A changed seed silently regenerates every cached stand-in model.
    assert stand_in_seed("qwen2.5-1.5b-instruct") == 998682890
    assert stand_in_seed("qwen2.5-1.5b-instruct") != stand_in_seed("llama-3.2-1b-instruct")


@pytest.mark.parametrize(
    ("world_sizes", "cpus", "expected"),
    [
        ([1, 1], [0, 1], ["0", "1"]),
        ([1], [0, 1, 2, 3], ["0,1,2,3"]),
        ([2, 1], [0, 1, 2, 3, 4, 5], ["0,1|2,3", "4,5"]),
        ([2, 1], [0, 1], ["0|1", "0"]),
        ([1, 1], [4, 7], ["4", "7"]),
    ],
)
def test_cpu_bindings_split_cpus_between_all_ranks(
    world_sizes: list[int], cpus: list[int], expected: list[str]
) -> None:
    assert cpu_bindings(world_sizes, cpus) == expected


def test_server_command_serves_the_stand_in_under_the_configured_name(tmp_path: Path) -> None:
    launch = plan_launches(_config(), cache_dir=tmp_path, ports={"small-0": 9002})[1]
    command = server_command(launch, Path("/venv/bin/python"))
    assert command[:3] == ["/venv/bin/python", "-m", SERVER_MODULE]
    assert command[3:] == [
        "--model", str(tmp_path / "small"),
        "--served-model-name", "small",
        "--host", "127.0.0.1",
        "--port", "9002",
        "--tensor-parallel-size", "1",
        "--kv-events-config", EVENTS_5557,  # LocalWorkers sets a free port of its own
    ]  # fmt: skip


def test_server_env_is_offline_with_fixed_kv_cache_and_own_cpus(tmp_path: Path) -> None:
    launches = plan_launches(_config(), cache_dir=tmp_path, cpus=[0, 1, 2, 3, 4, 5])
    env = server_env(launches[1], {"PATH": "/bin", "HF_HUB_OFFLINE": "0"}, kv_cache_gib=2)
    assert env["PATH"] == "/bin"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "4"  # big-0 took 0-3 for its 4 ranks


def test_tinymodel_command_makes_the_stand_in_long_enough_for_max_model_len(
    tmp_path: Path,
) -> None:
    launches = plan_launches(_config(), cache_dir=tmp_path)
    big, small = (tinymodel_command(x, Path("/py")) for x in launches)
    assert big == [
        "/py", "-m", "workers.tinymodel", str(tmp_path / "big"),
        "--seed", str(stand_in_seed("big")), "--max-positions", "8192",
    ]  # fmt: skip
    assert small[-2:] == ["--max-positions", "4096"]


def test_attached_config_points_launched_workers_at_their_actual_ports(tmp_path: Path) -> None:
    workers = LocalWorkers(_config(), cache_dir=tmp_path, ports={"big-0": 9101, "small-0": 9102})
    attached = workers.attached_config()
    assert attached.models[0].workers == [WorkerConfig(name="big-0", url="http://127.0.0.1:9101")]
    assert [w.url for w in attached.models[1].workers] == [
        "http://127.0.0.1:9102",
        "http://10.0.0.5:8000",
    ]
    assert attached.models[0].max_model_len == 8192


def test_stand_in_counts_as_complete_only_with_a_matching_stamp(tmp_path: Path) -> None:
    assert not is_complete(tmp_path, seed=1)
    (tmp_path / STAMP_NAME).write_text(
        json.dumps({"generator_version": 2, "seed": 1, "max_positions": 4096})
    )
    assert is_complete(tmp_path, seed=1)
    assert not is_complete(tmp_path, seed=2)
    assert not is_complete(tmp_path, seed=1, max_positions=8192)


LORA_AND_POOLING = """
models:
  - name: chat
    model: org/Chat-1B
    adapters:
      - {name: chat-sql, path: org/chat-sql-lora}
      - {name: chat-law, path: /adapters/law}
    max_lora_rank: 4
    runtime_lora: true
    workers:
      - {name: chat-0, gpus: [0], port: 8101}
  - name: plain
    model: org/Plain-1B
    runtime_lora: true
    workers:
      - {name: plain-0, gpus: [1], port: 8102}
  - name: embed
    model: org/Embed-small
    runner: pooling
    workers:
      - {name: embed-0, gpus: [2], port: 8103}
"""


def test_flags_enable_lora_with_every_adapter_and_its_rank() -> None:
    chat = _config(LORA_AND_POOLING).models[0]
    flags = vllm_flags(chat, chat.workers[0])
    start = flags.index("--enable-lora")
    assert flags[start : start + 6] == [
        "--enable-lora",
        "--lora-modules", "chat-sql=org/chat-sql-lora", "chat-law=/adapters/law",
        "--max-lora-rank", "4",
    ]  # fmt: skip
    local = vllm_flags(chat, chat.workers[0], adapter_paths={"chat-law": "/tmp/law"})
    assert "chat-law=/tmp/law" in local
    assert "chat-sql=org/chat-sql-lora" in local


def test_runtime_lora_alone_enables_lora_without_modules_and_sets_the_env() -> None:
    plain = _config(LORA_AND_POOLING).models[1]
    flags = vllm_flags(plain, plain.workers[0])
    assert "--enable-lora" in flags
    assert "--lora-modules" not in flags
    assert vllm_env(plain)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in vllm_env(_config().models[1])


def test_workers_keep_idle_connections_longer_than_the_gateways_pool() -> None:
    # vLLM's default is 5 s; the gateway's pool keeps idle connections for 30 s.
    small = _config().models[1]
    assert int(vllm_env(small)["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) > 30


def test_pooling_model_runs_the_pooling_runner_and_generate_models_do_not() -> None:
    embed = _config(LORA_AND_POOLING).models[2]
    flags = vllm_flags(embed, embed.workers[0])
    assert flags[flags.index("--runner") + 1] == "pooling"
    assert "--enable-lora" not in flags
    small = _config().models[1]
    assert "--runner" not in vllm_flags(small, small.workers[0])


def test_stand_ins_follow_the_runner_and_adapters_get_their_own(tmp_path: Path) -> None:
    chat, _, embed = plan_launches(_config(LORA_AND_POOLING), cache_dir=tmp_path, cpus=[0])
    assert tinymodel_command(embed, Path("/py")) == [
        "/py", "-m", "workers.tinyembed", str(tmp_path / "embed"),
        "--seed", str(stand_in_seed("embed")),
    ]  # fmt: skip
    sql, law = adapter_commands(chat, Path("/py"))
    assert sql == [
        "/py", "-m", "workers.tinylora", str(tmp_path / "adapters" / "chat-sql"),
        "--base", str(tmp_path / "chat"), "--seed", str(stand_in_seed("chat-sql")),
        "--rank", "4",  # within the model's max_lora_rank
    ]  # fmt: skip
    assert law[3] == str(tmp_path / "adapters" / "chat-law")
    command = server_command(chat, Path("/py"))
    assert f"chat-law={tmp_path / 'adapters' / 'chat-law'}" in command
    env = server_env(chat, {}, kv_cache_gib=1)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_ENABLE_RESPONSES_API_STORE"] == "1"  # else vLLM ignores `store`
    assert "VLLM_ENABLE_RESPONSES_API_STORE" not in server_env(embed, {}, kv_cache_gib=1)


def test_attached_config_points_adapters_at_their_local_stand_ins(tmp_path: Path) -> None:
    workers = LocalWorkers(_config(LORA_AND_POOLING), cache_dir=tmp_path)
    adapters = workers.attached_config().models[0].adapters
    assert [(a.name, a.path) for a in adapters] == [
        ("chat-sql", str(tmp_path / "adapters" / "chat-sql")),
        ("chat-law", str(tmp_path / "adapters" / "chat-law")),
    ]


def test_a_lora_rank_vllm_refuses_is_reported_before_deploying() -> None:
    (error,) = flag_errors(_config(LORA_AND_POOLING))  # max_lora_rank: 4
    assert error.startswith("models[0] (name=chat).max_lora_rank: vLLM accepts only 1, 8, 16,")
    assert flag_errors(_config()) == []


def test_stand_in_config_keeps_workers_launched_and_points_adapters_locally(
    tmp_path: Path,
) -> None:
    # What `workers run` hands the gateway: its own launched workers, the adapters' stand-ins.
    config = _config(LORA_AND_POOLING)
    served = LocalWorkers(config, cache_dir=tmp_path).stand_in_config()
    assert [m.workers for m in served.models] == [m.workers for m in config.models]
    assert served.models[0].adapters[1].path == str(tmp_path / "adapters" / "chat-law")


def test_a_model_scheduling_by_priority_launches_vllm_with_the_priority_policy() -> None:
    config = parse_models_config(
        "models:\n"
        "  - {name: p, model: org/P, scheduling_policy: priority,"
        " workers: [{name: p-0, gpus: [0], port: 8101}]}\n"
        "  - {name: f, model: org/F, workers: [{name: f-0, gpus: [1], port: 8102}]}\n"
    )
    by_priority, first_come = config.models
    flags = vllm_flags(by_priority, by_priority.workers[0])
    assert flags[flags.index("--scheduling-policy") + 1] == "priority"
    assert "--scheduling-policy" not in vllm_flags(first_come, first_come.workers[0])
