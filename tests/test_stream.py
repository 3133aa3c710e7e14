import zlib

import numpy as np
import pytest
import torch

import actzip
from actzip import codecs
from actzip.cli import app
from actzip.codecs.base import write_varint
from actzip.errors import CorruptStreamError
from actzip.stream import MAGIC, info
from typer.testing import CliRunner


def activations(signed=False, shape=(2, 8, 6, 6)):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return x if signed else np.maximum(x, 0)


@pytest.mark.parametrize("codec", codecs.names())
@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_dumps_loads_error_is_half_a_step(codec, bits, signed):
    x = activations(signed)
    y = actzip.loads(actzip.dumps(x, codec=codec, bits=bits))
    assert y.shape == x.shape and y.dtype == x.dtype
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    assert np.abs(y - x).max() <= np.abs(x).max() / qmax / 2 * 1.0001
    assert (y[x == 0] == 0).all()


def test_per_channel_and_torch_input():
    x = torch.from_numpy(activations()) * torch.arange(1, 9).reshape(1, 8, 1, 1)
    data = actzip.dumps(x, codec="huffman", bits=8, per_channel=True)
    assert len(info(data)["quant"]["scale"]) == 8
    y = actzip.loads(data)
    step = x.amax((0, 2, 3)).numpy() / 255
    assert (np.abs(y - x.numpy()).max((0, 2, 3)) <= step / 2 * 1.0001).all()


def test_info_reports_the_real_size():
    data = actzip.dumps(activations(), codec="zvc", bits=8)
    i = info(data)
    assert i["bytes"] == len(data) and i["shape"] == [2, 8, 6, 6]
    assert i["compression"] == pytest.approx(2 * 8 * 6 * 6 * 8 / (8 * len(data)))


def _reframe(header: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(header))
    return MAGIC + b"\x01" + write_varint(len(header)) + header + write_varint(len(payload)) + payload + \
        crc.to_bytes(4, "little")


def test_damaged_containers_are_refused():
    data = actzip.dumps(activations(), codec="seg", bits=8)
    bad = {
        "magic": b"XZIP" + data[4:],
        "version": data[:4] + b"\x09" + data[5:],
        "truncated": data[:-5],
        "appended": data + b"\x00",
        "flipped": data[:40] + bytes([data[40] ^ 0x10]) + data[41:],
        "header too long": MAGIC + b"\x01" + write_varint(2**40) + data[6:],
        "empty": b"",
    }
    for what, b in bad.items():
        with pytest.raises(CorruptStreamError):
            actzip.loads(b)
    # valid framing and checksum, lying header: caught by the field checks
    payload = codecs.get("seg").encode(np.zeros(10, np.uint8))
    for header in [b'{"shape":[3,3],"dtype":"float32","codec":{"id":"seg"},"quant":{"bits":8,"signed":false,'
                   b'"scale":[1.0],"axis":null}}',
                   b'{"shape":[10],"dtype":"float32","codec":{"id":"nope"},"quant":{"bits":8,"signed":false,'
                   b'"scale":[1.0],"axis":null}}',
                   b'{"shape":[10],"dtype":"int8","codec":{"id":"seg"},"quant":{}}',
                   b'{"shape":[-1],"dtype":"float32","codec":{"id":"seg"},"quant":{}}',
                   b'[1, 2]', b'\xff\xfe']:
        with pytest.raises(CorruptStreamError):
            actzip.loads(_reframe(header, payload))


def test_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError, match="NaN"):
        actzip.dumps(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="float"):
        actzip.dumps(np.array([1, 2], np.int32))
    with pytest.raises(ValueError, match="bit width"):
        actzip.dumps(activations(), bits=17)


def test_cli_encode_decode_info(tmp_path):
    runner = CliRunner()
    x = activations()
    np.save(tmp_path / "x.npy", x)
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    for src in ("x.npy", "x.pt"):
        r = runner.invoke(app, ["encode", str(tmp_path / src), "-o", str(tmp_path / "s.azip"), "--codec", "rans"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["decode", str(tmp_path / "s.azip"), "-o", str(tmp_path / "y.safetensors")])
        assert r.exit_code == 0, r.output
        from safetensors.numpy import load_file
        y = load_file(str(tmp_path / "y.safetensors"))["tensor"]
        assert np.abs(y - x).max() <= x.max() / 255 / 2 * 1.0001
    r = runner.invoke(app, ["info", str(tmp_path / "s.azip")])
    assert r.exit_code == 0 and "rans" in r.output and "bits/value" in r.output
    (tmp_path / "plain").write_bytes(b"")  # written atomically, the stream reads like any new file
    assert (tmp_path / "s.azip").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    (tmp_path / "bad.azip").write_bytes(b"AZIP\x01garbage")
    for args in (["decode", str(tmp_path / "bad.azip"), "-o", str(tmp_path / "z.npy")],
                 ["info", str(tmp_path / "missing.azip")],
                 ["encode", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"), "--codec", "nope"],
                 ["encode", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"), "--bits", "0"],
                 ["decode", str(tmp_path / "s.azip"), "-o", str(tmp_path / "z.txt")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "z.npy").exists() and not (tmp_path / "o").exists()
