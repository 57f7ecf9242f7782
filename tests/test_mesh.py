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
