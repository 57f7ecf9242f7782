import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxalign import mesh as mesh_lib
from jaxalign.mesh import MeshSpecError, parse_mesh_spec


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("dp:2,fsdp:-1,tp:1", {"dp": 2, "fsdp": 4, "tp": 1}),
        ("2,-1,1", {"dp": 2, "fsdp": 4, "tp": 1}),
        ("1,1,-1", {"dp": 1, "fsdp": 1, "tp": 8}),
        ("tp:2", {"dp": 1, "fsdp": 1, "tp": 2}),  # unnamed axes default to 1...
        ("fsdp:-1", {"dp": 1, "fsdp": 8, "tp": 1}),
        (" dp:2 , fsdp:2 , tp:2 ", {"dp": 2, "fsdp": 2, "tp": 2}),
    ],
)
def test_parse_mesh_spec(spec, expected):
    num_devices = 2 if spec == "tp:2" else 8  # ...so "tp:2" alone needs exactly 2 devices
    assert parse_mesh_spec(spec, num_devices) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("3,-1,1", "does not divide the 8"),
        ("2,2,1", "needs 4 devices but 8"),
        ("2,-1,-1", "only one axis may be -1"),
        ("dp:2,foo:4", "unknown axis 'foo'"),
        ("dp:2,dp:4", "given twice"),
        ("2,4", "needs 3 sizes"),
        ("dp:2,4,1", "not a mix"),
        ("a,b,c", "'a' is not an integer"),
        ("0,-1,1", "must be positive"),
    ],
)
def test_bad_mesh_specs_are_clear_errors(spec, message):
    with pytest.raises(MeshSpecError, match=message):
        parse_mesh_spec(spec, 8)


def test_make_mesh_uses_all_devices(devices):
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    assert mesh.axis_names == ("dp", "fsdp", "tp")
    assert dict(mesh.shape) == {"dp": 2, "fsdp": 2, "tp": 2}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_logical_rules():
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    assert mesh_lib.logical_to_spec(("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tp")
    assert mesh_lib.logical_to_spec(("batch", "length"), (8, 16), mesh) == P(("dp", "fsdp"), None)
    # A dimension an axis does not divide is replicated over that axis, not unevenly split.
    assert mesh_lib.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh) == P(
        "fsdp", None, None
    )
    assert mesh_lib.logical_to_spec(("batch",), (2,), mesh) == P("dp")
    with pytest.raises(KeyError, match="no rule"):
        mesh_lib.logical_to_spec(("nonsense",))


CLUSTER_VARS = ("OMPI_MCA_orte_hnp_uri", "SLURM_JOB_ID", "KUBERNETES_SERVICE_HOST", "TPU_WORKER_HOSTNAMES",
                "JAXALIGN_COORDINATOR", "JAXALIGN_NUM_PROCESSES", "JAXALIGN_PROCESS_ID")
# What `mpirun -np 2` of Open MPI 4 (Debian's openmpi-bin) sets in the second process's environment.
OPEN_MPI = {"OMPI_MCA_orte_hnp_uri": "3735224321.0;tcp://10.0.0.7:40345", "OMPI_COMM_WORLD_SIZE": "2",
            "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[3-4]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0"}


@pytest.fixture
def started(monkeypatch):
    """The arguments jax.distributed.initialize is called with (it is not really called)."""
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def test_no_cluster_starts_nothing(started):
    assert mesh_lib.detected_cluster() is None
    mesh_lib.initialize_distributed()
    assert started == []


@pytest.mark.parametrize("env, cluster", [(OPEN_MPI, "OmpiCluster"), (SLURM, "SlurmCluster")])
def test_clusters_jax_detects_start_with_its_detection(env, cluster, started, monkeypatch):
    """Open MPI and SLURM are left to JAX's detection (an mpirun of Open MPI was not run: the test sets
    the environment Open MPI 4's mpirun gives a process)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert mesh_lib.detected_cluster() == cluster
    mesh_lib.initialize_distributed()
    assert started == [((), {})]  # no arguments: JAX reads coordinator, count and id itself


def test_open_mpi_environment_gives_the_process_layout(monkeypatch):
    from jax._src import clusters

    for name, value in OPEN_MPI.items():
        monkeypatch.setenv(name, value)
    coordinator, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 10)
    assert (coordinator.split(":")[0], count, index) == ("10.0.0.7", 2, 1)


def test_explicit_coordinator_is_passed_on(started):
    mesh_lib.initialize_distributed("10.0.0.7:1234", 2, 1)
    assert started == [(("10.0.0.7:1234", 2, 1), {})]
