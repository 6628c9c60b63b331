import json
import signal
import subprocess
import sys

import h5py
import pytest

from llm_introspection.storage import atomic_h5, atomic_path, set_attrs, write_json


def test_failed_write_leaves_neither_output_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_output(tmp_path):
    target = tmp_path / "out.h5"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, numpy as np\n"
        "from llm_introspection.storage import atomic_h5\n"
        f"with atomic_h5({str(target)!r}) as h5:\n"
        "    h5.create_dataset('x', data=np.zeros(1000))\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not target.exists()


def test_json_is_byte_stable_and_h5_attrs_round_trip(tmp_path):
    data = {"b": [1, 2], "a": {"z": 1.5, "y": None}}
    write_json(tmp_path / "one.json", data)
    write_json(tmp_path / "two.json", dict(reversed(list(data.items()))))
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    with atomic_h5(tmp_path / "x.h5") as h5:
        set_attrs(h5, {"model": {"name": "m"}, "n": 3, "none": None})
    with h5py.File(tmp_path / "x.h5") as h5:
        assert json.loads(h5.attrs["model"]) == {"name": "m"} and h5.attrs["n"] == 3
        assert json.loads(h5.attrs["none"]) is None
