"""`run([sys.executable, ...])`: subprocess.run for Python commands, without paying for torch's
import in every one.

Many tests run `python -m aot ...` (or `python -c CODE`, `python SCRIPT`) in a process of its own:
the command's exit status, its stderr and its isolation from the test process are what they check.
A fresh interpreter spends seconds importing torch before it does anything. Here a *warm* process
(started on first use, one per test process and set of import-time settings, see below) imports
torch, numpy and a few other third-party modules once and forks a child for every command. The
child sets up argv, sys.path, the working directory, the environment, resource limits and
stdin/stdout/stderr as the fresh interpreter would have them, runs the command as `__main__`, and
exits as the interpreter does (the status of SystemExit, or 1 and the traceback; non-daemon threads
joined, atexit handlers run, streams flushed), only without tearing down every module. The test
gets the same CompletedProcess (exit status, or -N for a signal; stdout and stderr) as from
subprocess.run. The aot package is never imported by the warm process: every command imports it
afresh. The child's parent is the warm process, not the test.

A command runs cold (plain subprocess.run) where the two could differ: another program than this
interpreter, interpreter options (`-S`, `-X ...`), keyword arguments other than those below, a
`preexec_fn` (`rlimits=` sets resource limits in the child instead), a third set of import-time
settings (environment variables read when the modules load: OMP_*, MKL_*, TORCH*, PYTHON* other than
PYTHONPATH, LD_*, PATH, ...), a warm process that could not start cleanly (threads, or output while
importing), or AOT_TEST_COLD=1 (every command cold, to compare).
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading

# third-party modules the CLI imports, at once or in its commands (none of them reads the
# environment at import beyond the prefixes below); the aot package is deliberately not among them
PRELOAD = ("torch", "numpy", "PIL.Image", "tqdm", "yaml", "scipy.linalg", "scipy.optimize", "scipy.sparse.csgraph",
           "sklearn.datasets", "torchvision")
# environment variables read at import (by the interpreter, libgomp, torch, numpy, the allocator):
# a command whose values differ from the warm process's runs cold
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_",
                        "NUMPY_", "SCIPY_", "SKLEARN_", "SCIKIT_LEARN_", "JOBLIB_", "PYTHON", "LD_", "MALLOC_",
                        "LC_", "LANG", "TZ", "HOME", "XDG_", "PATH")
IMPORT_TIME_EXCEPT = {"PYTHONPATH"}
RUN_KWARGS = {"capture_output", "text", "timeout", "cwd", "env", "input", "check", "stdout", "stderr", "rlimits"}

_HEADER = struct.Struct("!Q")

# ------------------------------------------------------------------------------------------------
# The warm process (runs as `python -c SERVER FD`).

SERVER = r'''
import importlib, json, os, signal, socket, struct, sys, threading
HEADER = struct.Struct("!Q")
sock = socket.socket(fileno=int(sys.argv[1]))
sock.set_inheritable(False)
ok = []
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
        ok.append(name)
    except Exception:
        pass
sys.stdout.flush(); sys.stderr.flush()
tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()
base_path = list(sys.path)

def recv_exact(n, fds=None):
    data = b""
    while len(data) < n:
        if fds is not None and not data:
            chunk, got, _, _ = socket.recv_fds(sock, n, 8)
            fds.extend(got)
        else:
            chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def send(obj):
    data = json.dumps(obj).encode()
    sock.sendall(HEADER.pack(len(data)) + data)

def serve():
    """Fork a child per request; only children return (with their request and fds)."""
    send({"ready": tasks == 1, "preloaded": ok, "tasks": tasks})
    if tasks != 1:  # forking a process with threads is unsafe: refuse, the client runs cold
        sys.exit(0)
    while True:
        fds = []
        try:
            (n,) = HEADER.unpack(recv_exact(HEADER.size, fds))
            req = json.loads(recv_exact(n))
        except EOFError:
            sys.exit(0)
        if "mode" not in req:  # a kill that crossed the child's exit
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            return req, fds
        for fd in fds:
            os.close(fd)
        send({"pid": pid})
        pidfd = os.pidfd_open(pid)
        import select
        while True:
            ready, _, _ = select.select([pidfd, sock], [], [])
            if sock in ready:
                try:
                    (n,) = HEADER.unpack(recv_exact(HEADER.size))
                    msg = json.loads(recv_exact(n))
                except EOFError:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    sys.exit(0)
                if msg.get("kill"):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if pidfd in ready:
                break
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        send({"returncode": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)})

req, fds = serve()
# ---- in the child: become the fresh interpreter of `req`
for s in (signal.SIGINT,):
    signal.signal(s, signal.default_int_handler)
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
    signal.signal(s, signal.SIG_DFL)
for target, fd in zip((0, 1, 2), fds):
    os.dup2(fd, target)
for fd in set(fds):
    if fd > 2:
        os.close(fd)
os.chdir(req["cwd"])
os.environ.clear()
os.environ.update(req["env"])
if req["rlimits"]:
    import resource
    for which, limits in req["rlimits"]:
        resource.setrlimit(which, tuple(limits))
extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
zygote_extra = [p for p in json.loads(sys.argv[3]) if p]
rest = [p for p in base_path[1:] if p not in zygote_extra]
mode, target, args = req["mode"], req["target"], req["args"]
import types, builtins
main = types.ModuleType("__main__")
main.__builtins__ = builtins
sys.modules["__main__"] = main
def run_request():
    if mode == "-m":
        import runpy
        sys.path[:] = [os.getcwd(), *extra, *rest]
        sys.argv[:] = ["-m", *args]
        runpy._run_module_as_main(target)
    elif mode == "-c":
        sys.path[:] = ["", *extra, *rest]
        sys.argv[:] = ["-c", *args]
        exec(compile(target, "<string>", "exec"), main.__dict__)
    else:
        sys.path[:] = [os.path.dirname(os.path.realpath(target)), *extra, *rest]
        sys.argv[:] = [target, *args]
        main.__file__ = target
        with open(target, "rb") as f:
            exec(compile(f.read(), target, "exec"), main.__dict__)

# The interpreter's exit, less the teardown of every module (seconds with torch loaded): the exit
# status of SystemExit, the traceback of anything else, non-daemon threads joined, atexit handlers,
# the standard streams flushed.
try:
    run_request()
    code = 0
except SystemExit as exc:
    if exc.code is None:
        code = 0
    elif isinstance(exc.code, int):
        code = exc.code
    else:
        print(exc.code, file=sys.stderr)
        code = 1
except BaseException as exc:
    exc.__traceback__ = exc.__traceback__.tb_next.tb_next  # without this file's two frames
    sys.excepthook(type(exc), exc, exc.__traceback__)
    code = 1
threading._shutdown()
import atexit
atexit._run_exitfuncs()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
os._exit(code & 0xFF)
'''


class _Warm:
    """One warm process, owned by the process (test session) that started it."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)
        self.lock = threading.Lock()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = parent
        self.pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        # what the imports print (warnings) would be on every fresh command's stderr: then no warm start
        with tempfile.TemporaryFile() as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(child.fileno()), json.dumps(PRELOAD), json.dumps(self.pythonpath)],
                pass_fds=[child.fileno()], env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/")
            child.close()
            hello = self._recv(timeout=300)
            log.seek(0)
            self.ready = bool(hello and hello.get("ready")) and not log.read()

    def _send(self, obj, fds=()):
        data = json.dumps(obj).encode()
        head = _HEADER.pack(len(data))
        if fds:
            socket.send_fds(self.sock, [head], list(fds))
            self.sock.sendall(data)
        else:
            self.sock.sendall(head + data)

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("warm process exited")
            data += chunk
        return data

    def _recv(self, timeout: float | None = None):
        self.sock.settimeout(timeout)
        try:
            (n,) = _HEADER.unpack(self._recv_exact(_HEADER.size))
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(None)
        return json.loads(self._recv_exact(n))

    def run(self, req: dict, fds: list[int], timeout: float | None) -> int | None:
        """The child's exit status, or None when it ran past `timeout` (it is killed)."""
        self._send(req, fds)
        started = self._recv()
        assert "pid" in started, started
        done = self._recv(timeout)
        if done is None:
            self._send({"kill": True})
            self._recv()
            return None
        return done["returncode"]

    def close(self):
        try:
            self.sock.close()
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# warm processes of this process (a forked test process must not use its parent's), one per set of
# import-time settings (a test that runs a command with other OMP_* or PATH gets one of its own)
_WARM: dict[tuple[int, tuple], _Warm | None] = {}
MAX_WARM = 2  # per test process; commands with yet other import-time settings run cold


def _import_time_env(env: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items()
                        if k.startswith(IMPORT_TIME_PREFIXES) and k not in IMPORT_TIME_EXCEPT))


def _warm(env: dict[str, str]) -> _Warm | None:
    key = (os.getpid(), _import_time_env(env))
    if key not in _WARM:
        if sum(pid == os.getpid() for pid, _ in _WARM) >= MAX_WARM:
            return None
        try:
            _WARM[key] = _Warm(env)
        except Exception:
            _WARM[key] = None
        if _WARM[key] is not None and not _WARM[key].ready:
            _WARM[key].close()
            _WARM[key] = None
    return _WARM[key]


def _parse(cmd) -> tuple[str, str, list[str]] | None:
    """(mode, target, args) of `python -m MOD ARGS`, `python -c CODE ARGS`, `python SCRIPT ARGS`."""
    if isinstance(cmd, (str, bytes)) or len(cmd) < 2:
        return None
    cmd = [os.fspath(c) for c in cmd]
    if not all(isinstance(c, str) for c in cmd) or cmd[0] != sys.executable:
        return None
    if cmd[1] in ("-m", "-c"):
        return (cmd[1], cmd[2], cmd[3:]) if len(cmd) > 2 else None
    if cmd[1].startswith("-") or not cmd[1].endswith(".py"):
        return None
    return "script", cmd[1], cmd[2:]


def _set_rlimits(rlimits: dict[int, tuple[int, int]]) -> None:
    import resource

    for which, limits in rlimits.items():
        resource.setrlimit(which, limits)


def run(cmd, *, rlimits: dict[int, tuple[int, int]] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, **kwargs) for `cmd` = [sys.executable, ...], in a child of the warm process
    where that gives the same result (see the module's docstring), else cold. `rlimits`
    ({resource.RLIMIT_*: (soft, hard)}) are set in the child before the command starts, as a
    `preexec_fn` calling resource.setrlimit would."""
    if kwargs.get("preexec_fn", 0) is None:
        del kwargs["preexec_fn"]
    if rlimits:
        if "preexec_fn" in kwargs:
            raise TypeError("rlimits and preexec_fn together")
        kwargs["rlimits"] = {int(k): tuple(v) for k, v in rlimits.items()}
    parsed = _parse(cmd)
    env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
    cold = (parsed is None or os.environ.get("AOT_TEST_COLD") == "1" or set(kwargs) - RUN_KWARGS
            or (kwargs.get("capture_output") and ("stdout" in kwargs or "stderr" in kwargs))
            or any(kwargs.get(k) not in (None, subprocess.PIPE) for k in ("stdout", "stderr"))
            or not hasattr(socket, "send_fds") or not hasattr(os, "pidfd_open"))
    warm = None if cold else _warm(env)
    if warm is None or not warm.lock.acquire(blocking=False):
        if "rlimits" in kwargs:
            limits = kwargs.pop("rlimits")
            kwargs["preexec_fn"] = lambda: _set_rlimits(limits)
        return subprocess.run(cmd, **kwargs)
    try:
        return _run_warm(warm, cmd, parsed, env, **{k: v for k, v in kwargs.items() if k != "env"})
    finally:
        warm.lock.release()


def _run_warm(warm: _Warm, cmd, parsed, env, *, capture_output=False, text=False, timeout=None, cwd=None,
              input=None, check=False, stdout=None, stderr=None, rlimits=None) -> subprocess.CompletedProcess:
    mode, target, args = parsed
    capture_out = capture_output or stdout == subprocess.PIPE
    capture_err = capture_output or stderr == subprocess.PIPE
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        if input is not None:
            fin.write(input.encode(locale.getpreferredencoding(False)) if isinstance(input, str) else input)
            fin.seek(0)
            in_fd = fin.fileno()
        else:
            in_fd = 0
        fds = [in_fd, fout.fileno() if capture_out else 1, ferr.fileno() if capture_err else 2]
        req = {"mode": mode, "target": target, "args": args, "env": env, "rlimits": list((rlimits or {}).items()),
               "cwd": os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd()}
        code = warm.run(req, fds, timeout)

        def read(f, captured):
            if not captured:
                return None
            f.seek(0)
            data = f.read()
            if text:
                return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")
            return data

        out, err = read(fout, capture_out), read(ferr, capture_err)
    if code is None:
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err)
    res = subprocess.CompletedProcess(cmd, code, out, err)
    if check:
        res.check_returncode()
    return res


def _close_all():
    for key in [k for k in _WARM if k[0] == os.getpid()]:
        warm = _WARM.pop(key)
        if warm is not None:
            warm.close()


atexit.register(_close_all)
