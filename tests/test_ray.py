"""`bnconf report --ray`: units of work as Ray tasks on a local cluster the tests start (2 CPUs, plus one
1-CPU node that the node-death test adds and removes). The same seed gives the same report as a local run;
a crash on a node and a node that dies mid-unit each come back as a crashed cell with its input saved on
the driver, and the run finishes; a unit no node can take, or that no node starts, fails at once with one
line; an unreachable address is one line, exit 2. No test depends on the machine's speed: every wait is
bounded generously, and only a failing test waits that long."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bnconf.conformance.isolation import Limits
from bnconf.conformance.repro import load_case
from bnconf.conformance.status import CellStatus
from bnconf.reports.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
DOOMED = f"{FIXTURES / 'ray_backends.py'}:DOOMED"
SEGFAULT = f"{FIXTURES / 'misbehaving.py'}:SEGFAULT"
KERAS = f"{FIXTURES / 'misbehaving.py'}:KERAS_IDEAL"  # another convention: a cross-framework pair
EXAMPLE = "bnconf.adapters.example_numpy:BACKEND"
WAIT = 300  # seconds: only a failing test waits this long
MIB = 2**20

# long; and the module's Ray cluster (the `cluster` fixture, about 8 s to start) once: the file in one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-cluster")]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster (a 2-CPU head node) and this process connected to it as the driver."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bnconf[ray]')")
    import ray
    from ray.cluster_utils import Cluster

    from bnconf.conformance import ray_cluster

    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, object_store_memory=80 * MIB,
                                                          include_dashboard=False))
    try:
        supervisor = ray_cluster.connect(c.address)
        yield c, supervisor
    finally:
        ray.shutdown()
        c.shutdown()


def _report(tmp_path: Path, *args) -> tuple[int, dict]:
    code = main(["report", *args, "--out", str(tmp_path)])
    return code, json.loads((tmp_path / "report.json").read_text())


def _strip_timings(doc: dict) -> dict:
    doc.pop("seconds_per_backend")
    for cell in doc["cells"]:
        cell.pop("seconds")
    return doc


def _replayed(reason: str):
    """The saved case named by a reason's replay line, loaded as `bnconf replay` would."""
    folder, target = reason.split("replay: bnconf replay ")[1].split(" --backend ")
    return load_case(folder, target)


def test_the_same_seed_gives_the_same_report_on_the_cluster_as_here(cluster, tmp_path):
    """The battery, edge cases, failing cases saved (a NON-CONFORMANT backend) and the cross-framework pairs
    run as Ray tasks: the JSON is the local --jobs 1 run's but for timings and the output folder, and every
    saved case folder its replay lines name is on the driver."""
    c, _ = cluster
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from bnconf.conformance.mutants import MUTANTS\n"
                     "BACKEND = MUTANTS['eps outside the square root'].backend\n")
    common = ["--backend", EXAMPLE, "--backend", f"{wrong}:BACKEND", "--backend", KERAS, "--examples", "3",
              "--pair-examples", "1", "--seed", "3"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    code_local, _ = _report(local, *common, "--jobs", "1")
    code_ray, _ = _report(remote, *common, "--ray", c.address)
    assert code_local == code_ray == 1
    text = (remote / "report.json").read_text()
    saved = set(re.findall(r"bnconf replay (\S+) --backend", text))
    assert saved and all(Path(folder).is_relative_to(remote / "report-cases") for folder in saved)
    assert all(load_case(folder, f"{wrong}:BACKEND")[0].name.startswith("mutant:") for folder in saved)
    doc_ray = _strip_timings(json.loads(text.replace(str(remote), str(local))))
    doc_local = _strip_timings(json.loads((local / "report.json").read_text()))
    assert doc_local["pairs"] and doc_local["edge"]
    assert doc_ray == doc_local


def test_a_crash_on_a_node_is_a_crashed_cell_with_its_case_saved_on_the_driver(cluster, tmp_path):
    c, _ = cluster
    code, doc = _report(tmp_path, "--backend", SEGFAULT, "--examples", "2", "--pair-examples", "0", "--no-edge-cases",
                        "--ray", c.address)
    cells = {cell["mode"]: cell for cell in doc["cells"]}
    crashed = cells["train_forward"]
    assert code == 1 and crashed["status"] == "crashed" and "SIGSEGV" in crashed["reason"]
    backend, mode, inputs, dtype, _ = _replayed(crashed["reason"])
    assert backend.name == "segfaults in training" and mode.value == "train_forward" and inputs.x.size
    assert str(tmp_path / "report-crashes") in crashed["reason"]
    assert all(cell["status"] == "ran" for m, cell in cells.items() if m != "train_forward")


def test_a_node_that_dies_mid_unit_is_a_crashed_cell_with_its_input_and_the_run_finishes(cluster, tmp_path,
                                                                                      monkeypatch):
    """A node advertising `bnconf_ray-doomed` takes the doomed backend's unit; the test removes the node while
    the training forward runs there, once the driver has that case's event (streamed from the node, it may
    arrive after the backend started sleeping). That cell is crashed (the node died) with its input saved on
    the driver, the backend's other cells run in a fresh task on the head node, the other backend is
    untouched, and the worker that ran on the dead node is gone."""
    from bnconf.conformance.ray_cluster import RaySupervisor

    c, _ = cluster
    marker = tmp_path / "sleeping.pid"
    node = c.add_node(num_cpus=1, resources={"bnconf_ray-doomed": 1}, object_store_memory=80 * MIB,
                      env_vars={"BNCONF_TEST_RAY_MARKER": str(marker)})
    removed, case_arrived = threading.Event(), threading.Event()
    driver_event = RaySupervisor._event

    def event_seen_by_the_driver(self, e, attempt, handle):
        driver_event(self, e, attempt, handle)
        if e.get("event") == "case" and e.get("folder") and "train_forward" in e.get("input", ""):
            case_arrived.set()

    monkeypatch.setattr(RaySupervisor, "_event", event_seen_by_the_driver)

    def remove_when_it_sleeps() -> None:
        deadline = time.monotonic() + WAIT
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        case_arrived.wait(max(0.0, deadline - time.monotonic()))
        c.remove_node(node, allow_graceful=False)
        removed.set()

    remover = threading.Thread(target=remove_when_it_sleeps, daemon=True)
    remover.start()
    try:
        code, doc = _report(tmp_path, "--backend", DOOMED, "--backend", EXAMPLE, "--examples", "2", "--pair-examples",
                            "0", "--no-edge-cases", "--time-limit", "600", "--ray", c.address)
    finally:
        remover.join(WAIT)
    assert removed.is_set() and marker.exists(), "the doomed backend should have run on the added node"
    assert case_arrived.is_set(), "the driver should have had the training forward's case event"
    cells = {(cell["backend"], cell["mode"]): cell for cell in doc["cells"]}
    died = cells["ray-doomed", "train_forward"]
    assert code == 1 and died["status"] == "crashed", died
    assert "the Ray node running it" in died["reason"]
    assert "died while running train_forward float64 cpu" in died["reason"]
    backend, mode, inputs, _, _ = _replayed(died["reason"])
    assert backend.name == "ray-doomed" and mode.value == "train_forward" and inputs.x.size
    assert [k for k, cell in cells.items() if cell["status"] != "ran" and k != ("ray-doomed", "train_forward")] == []
    assert {k[0] for k in cells} == {"ray-doomed", "example.numpy"}
    pid = int(marker.read_text())
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the worker on the dead node should be gone"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _workers_of_ray_tasks(c) -> set[int]:
    """The isolation workers that Ray tasks of bnconf (`unit_on_node`) run on the cluster `c`'s nodes (not on
    another test process's cluster)."""
    raylets = {info.process.pid for node in c.list_all_nodes() for info in node.all_processes.get("raylet", ())}
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return {p for p in pids if "bnconf.conformance.isolation" in _cmdline(p) and "unit_on_node" in _cmdline(_parent(p))
            and _parent(_parent(p)) in raylets}


def test_ctrl_c_stops_the_ray_tasks_and_leaves_a_valid_partial_report(cluster, tmp_path):
    """The hanging backend's training forward blocks in its worker on a node; Ctrl-C ends the run with the
    finished cells in an interrupted report (exit 130), and the worker on the node is stopped."""
    c, _ = cluster
    cmd = [sys.executable, "-m", "bnconf.reports.cli", "report", "--backend", f"{FIXTURES / 'misbehaving.py'}:HANG",
           "--examples", "2", "--pair-examples", "0", "--no-edge-cases", "--time-limit", "600", "--ray", c.address,
           "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial, deadline = tmp_path / "report.json", time.monotonic() + WAIT
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and len(json.loads(partial.read_text())["cells"]) == 3 and _workers_of_ray_tasks(c):
            break
        time.sleep(0.2)
    workers = _workers_of_ray_tasks(c)
    assert workers, "the hanging backend's worker should run under a Ray task"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 130, err.decode()[-2000:]
    doc = json.loads(partial.read_text())
    assert doc["status"] == "interrupted" and [cell["status"] for cell in doc["cells"]] == ["ran"] * 3
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "the worker on the node should be stopped"


def _battery_job(device: str) -> dict:
    """A battery job shaped as isolation.run_isolated builds it: one cell of the example backend."""
    return dict(kind="battery", target=EXAMPLE, backend="example.numpy", examples=1, seed=0, infer=False, edge=False,
                outputs=False, pair_examples=0, device=device, records=[], cases_dir=None,
                cells=[[0, device, "float64", "train_forward"]], extra_cells=[[device, "float64", "train_forward"]],
                infer_cells=[[device, "float64", "train_forward"]], edge_done=[])


def test_a_node_that_stops_answering_is_given_up_with_its_input_saved(cluster, tmp_path):
    """The Ray worker running a unit is frozen (SIGSTOP) while its backend hangs in a case: after the silence
    bound (3 s here) the unit is crashed with that case saved on the driver, and its task is killed."""
    from bnconf.conformance.ray_cluster import RaySupervisor

    c, _ = cluster
    hang = f"{FIXTURES / 'misbehaving.py'}:HANG"
    job = {**_battery_job("cpu"), "target": hang, "backend": "hangs in training"}
    running, frozen = threading.Event(), []

    def handle(e):
        if e["event"] == "case" and "folder" in e:
            running.set()

    def freeze() -> None:
        deadline = time.monotonic() + WAIT
        while not (running.is_set() and _workers_of_ray_tasks(c)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for worker in _workers_of_ray_tasks(c):
            ray_worker = _parent(worker)
            os.kill(ray_worker, signal.SIGSTOP)
            frozen.append((ray_worker, worker))

    freezer = threading.Thread(target=freeze, daemon=True)
    freezer.start()
    silent = RaySupervisor(c.address, owns=False, silence_timeout=3)
    try:
        kind, reason, case = silent.supervise(job, Limits(seconds=600), tmp_path, handle)
    finally:
        freezer.join(WAIT)
        for ray_worker, _ in frozen:
            os.kill(ray_worker, signal.SIGCONT)  # killed by the cancel once it runs again
    assert frozen and kind is CellStatus.CRASHED and case["cell"] == 0
    assert "sent nothing for 3 s while running train_forward float64 cpu" in reason
    backend, mode, _, _, _ = _replayed(reason)
    assert backend.name == "hangs in training" and mode.value == "train_forward"
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{p}").exists() for pair in frozen for p in pair) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for pair in frozen for p in pair), "the frozen task should be killed"


def test_a_unit_no_node_can_take_fails_at_once_with_one_line(cluster, tmp_path):
    """A CUDA unit on a cluster without GPUs: not run, one line saying what to start; nothing was submitted."""
    _, supervisor = cluster
    events = []
    kind, reason, case = supervisor.supervise(_battery_job("cuda"), Limits(seconds=60), tmp_path, events.append)
    assert kind is CellStatus.NOT_RUN and case is None and events == []
    assert "\n" not in reason and "GPU 1" in reason and "ray start --address" in reason and "--num-gpus 1" in reason


def test_a_unit_that_no_node_starts_fails_within_its_bound(cluster, tmp_path):
    """Both CPUs busy with other tasks: the unit is feasible but does not start; with a 2 s bound it is
    reported not run (one line) instead of waiting, and its task never runs."""
    import ray

    from bnconf.conformance.ray_cluster import RaySupervisor

    c, supervisor = cluster

    @ray.remote(num_cpus=1)
    def busy(seconds):
        time.sleep(seconds)

    blockers = [busy.remote(WAIT) for _ in range(2)]
    try:
        deadline = time.monotonic() + WAIT  # both started: no CPU left
        while ray.available_resources().get("CPU", 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        impatient = RaySupervisor(c.address, owns=False, start_timeout=2)
        events = []
        kind, reason, case = impatient.supervise(_battery_job("cpu"), Limits(seconds=60), tmp_path, events.append)
        assert kind is CellStatus.NOT_RUN and case is None and events == []
        assert "no Ray node started it within 2 s" in reason and "\n" not in reason
    finally:
        for b in blockers:
            ray.cancel(b, force=True)


def test_an_unreachable_or_malformed_address_is_one_line_with_exit_2(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bnconf[ray]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    for address, words in ((f"127.0.0.1:{port}", "cannot reach the Ray cluster at 127.0.0.1"),
                           ("not-an-address", "expected auto or HOST:PORT"),
                           ("ray://127.0.0.1:10001", "a Ray Client address, which cannot stream results back")):
        assert main(["report", "--backend", EXAMPLE, "--ray", address, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "report.json").exists()


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT,
                          env={**os.environ, **env})


def test_a_port_that_is_not_ray_and_auto_without_a_cluster_are_one_line_each():
    """In child processes: a half-done ray.init must not stay in this one."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bnconf[ray]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()  # open, accepts, never speaks Ray's protocol
        silent = _python("from bnconf.conformance.ray_cluster import ClusterError, connect\n"
                         f"try: connect('127.0.0.1:{s.getsockname()[1]}', connect_timeout=3)\n"
                         "except ClusterError as e: print(e)")
    assert "no Ray cluster answered there within 3 s" in silent.stdout, silent.stderr[-2000:]
    auto = _python("import ray\n"  # a cluster may run on this machine (this module's): Ray's answer where none does
                   "def init(**kwargs): raise ConnectionError('Could not find any running Ray instance.')\n"
                   "ray.init = init\n"
                   "from bnconf.conformance.ray_cluster import ClusterError, connect\n"
                   "try: connect('auto')\n"
                   "except ClusterError as e: print(e)")
    assert auto.stdout.startswith("--ray auto: no running Ray cluster found"), auto.stdout + auto.stderr[-2000:]
    assert len(auto.stdout.strip().splitlines()) == 1


def test_importing_bnconf_imports_no_ray_and_without_ray_connect_says_how_to_install_it():
    done = _python("import sys\nsys.modules['ray'] = None  # as if not installed\n"
                   "import bnconf.reports.cli, bnconf.conformance.ray_cluster as rc\n"
                   "try: rc.connect('auto')\n"
                   "except rc.ClusterError as e: print(e)")
    assert "pip install 'bnconf[ray]'" in done.stdout, done.stderr[-2000:]
    clean = _python("import sys, bnconf.reports.cli, bnconf.conformance.ray_cluster\nprint('ray' in sys.modules)")
    assert clean.stdout.strip() == "False", clean.stderr[-2000:]


def test_what_a_unit_asks_of_the_cluster():
    """1 CPU; a GPU on cuda; a built-in family's label once the cluster uses labels; another backend's label
    only where a node advertises it; a pair batch needs every family it loads."""
    from bnconf.conformance.ray_cluster import LABEL_SHARE, feasible, needs

    torch_name = "torch.nn.BatchNorm2d"
    battery = dict(kind="battery", backend=torch_name, device="cpu")
    plain = [{"CPU": 4.0}]
    labelled = [{"CPU": 4.0, "bnconf_torch": 1.0}, {"CPU": 2.0, "GPU": 1.0, "bnconf_flax": 1.0}]
    assert needs(battery, plain) == {"CPU": 1.0}
    assert needs(battery, labelled) == {"CPU": 1.0, "bnconf_torch": LABEL_SHARE}
    assert needs({**battery, "device": "cuda"}, labelled) == {"CPU": 1.0, "GPU": 1.0, "bnconf_torch": LABEL_SHARE}
    assert not feasible(needs({**battery, "device": "cuda"}, labelled), labelled)  # no node has both
    assert needs(dict(kind="battery", backend="mine", device="cpu"), labelled) == {"CPU": 1.0}
    assert needs(dict(kind="battery", backend="mine", device="cpu"), [{"CPU": 1.0, "bnconf_mine": 1.0}])["bnconf_mine"]
    pairs = dict(kind="matrix", device="cpu", backends=[["t", torch_name], ["j", "flax.linen.BatchNorm"]])
    assert set(needs(pairs, labelled)) == {"CPU", "bnconf_torch", "bnconf_flax"}
    assert not feasible(needs(pairs, labelled), labelled)
