"""Write a server state directory with the code of an older commit (run with that checkout
first on PYTHONPATH): one finished job, one cancelled mid-run with checkpoints, one uploaded
dataset. Copies the directory as it is then to FIXTURE, resumes the cancelled job with the
same old code, and prints as JSON what the new code must read back and compute."""
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from service.client import Client  # the old code's module: see the docstring

work, fixture = Path(sys.argv[1]), Path(sys.argv[2])
state = work / "state"
state.mkdir(parents=True, exist_ok=True)


def start():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                             "--state-dir", str(state), "--ray-num-cpus", "2"], stdout=sys.stderr)
    c = Client(f"127.0.0.1:{port}")
    for _ in range(120):
        if c.healthy(1.0):
            return proc, c
        time.sleep(0.5)
    raise SystemExit("server did not start")


def digest(w):
    return {k: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for k, a in sorted(w.items())}


proc, c = start()
rng = np.random.default_rng(0)
X = rng.standard_normal((200, 4)).astype(np.float32)
y = (X[:, 0] > 0).astype(np.int64)
np.savez(work / "up.npz", X=X, y=y)
info = c.upload_dataset(work / "up.npz")
done = c.submit({"model": {"input": 8, "layers": ["linear 16", "tanh", "linear 2"], "loss": "mse"},
                 "dataset": {"name": "regression", "params": {"n": 400, "d": 8, "outputs": 2}, "val_fraction": 0.25},
                 "optimizer": {"name": "adam", "lr": 0.01, "schedule": {"name": "cosine", "warmup_steps": 3}},
                 "batch_size": 50, "chunk_size": 10, "epochs": 3, "workers": 2, "cpus_per_worker": 0.5,
                 "checkpoint_every": 5, "seed": 7}, name="finished")
c.wait(done.id)
long = c.submit({"model": {"input": 4, "layers": ["linear 8", "relu", "linear 2"], "loss": "cross_entropy"},
                 "dataset": {"name": "npz", "params": {"path": info.id}},
                 "optimizer": {"name": "momentum", "lr": 0.05, "momentum": 0.9},
                 "batch_size": 20, "chunk_size": 5, "epochs": 60, "workers": 2, "cpus_per_worker": 0.5,
                 "checkpoint_every": 3, "seed": 3}, name="cancelled")
while c.get(long.id).checkpoint_step < 6:
    time.sleep(0.05)
c.cancel(long.id)
c.wait(long.id)
out = {"finished": done.id, "cancelled": long.id, "dataset": info.id,
       "finished_weights": digest(c.weights(done.id)[2]),
       "jobs": {j.id: {"state": j.state, "step": j.step, "total_steps": j.total_steps,
                       "checkpoint_step": j.checkpoint_step} for j in c.list()}}
c.close()
proc.terminate()
proc.wait(60)
shutil.copytree(state, fixture)
proc, c = start()
c.resume(long.id)
final = c.wait(long.id)
out["resumed_state"], out["resumed_step"] = final.state, final.step
out["resumed_weights"] = digest(c.weights(long.id)[2])
c.close()
proc.terminate()
proc.wait(60)
print(json.dumps(out, indent=1))
