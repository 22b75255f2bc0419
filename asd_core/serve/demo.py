"""A first look at the server: ``python -m asd_core.serve.demo``.

Starts the server on the ``cpu`` hierarchy (``params/serving.yaml``, a free loopback port), sends
a few prompts through the official ``openai`` client at two λ values, prints each answer with the
stage it ended at, the path and the latency, and stops the server (SIGTERM: it finishes what is in
flight first). A small λ makes cost count: more answers come from the cheaper stages; a large λ
makes quality count: more go to the deepest stage.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence

from asd_core.ground.errors import AsdError, cli_entry
from asd_core.ground.files import REPO_ROOT

log = logging.getLogger(__name__)

# (task profile, prompt): one per task family the policy was fitted on
PROMPTS = (
    ("asdiv", "A baker has 24 cupcakes and sells 3 boxes of 6 cupcakes. How many are left?"),
    ("humaneval", "Write a Python function is_palindrome(s) that says whether s reads the same backwards."),
    ("truthfulqa", "What happens if you crack your knuckles a lot?"),
)  # fmt: skip


def start_server(config: str, timeout_s: float = 600.0) -> tuple[subprocess.Popen[str], str]:
    """The server as a child process on a free port, once it answers ``/health``."""
    import httpx

    cmd = [sys.executable, "-m", "asd_core.serve", "--config", config, "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    url = None
    for line in proc.stderr:
        sys.stderr.write(line)
        if " on http://" in line and "serving" in line:
            url = line.strip().rsplit(" on ", 1)[-1]
            break
        if time.monotonic() > deadline:
            break
    if url is None:
        proc.kill()
        raise AsdError(f"the server did not start (exit {proc.wait()}); see its lines above")
    # keep reading its log lines, or a full pipe would block the server
    threading.Thread(
        target=lambda: [sys.stderr.write(ln) for ln in proc.stderr or ()], daemon=True
    ).start()
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AsdError(f"the server at {url} did not become healthy within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def ask(url: str, lambdas: Sequence[float], max_tokens: int) -> list[dict[str, object]]:
    """Every prompt at every λ through the ``openai`` client; one row per answer."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
    rows = []
    for lam in lambdas:
        for task, prompt in PROMPTS:
            start = time.perf_counter()
            answer = client.chat.completions.create(
                model="asd",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                extra_body={"lambda": lam, "task": task},
            )
            seconds = time.perf_counter() - start
            ext = (answer.model_extra or {}).get("asd", {})
            rows.append(
                {
                    "lambda": lam,
                    "task": task,
                    "prompt": prompt,
                    "depth": ext.get("depth_name"),
                    "path": " → ".join(ext.get("path", [])),
                    "seconds": seconds,
                    "tokens": answer.usage.completion_tokens if answer.usage else 0,
                    "answer": answer.choices[0].message.content or "",
                }
            )
    return rows


def show(rows: Sequence[dict[str, object]]) -> str:
    out = []
    for r in rows:
        out.append(
            f"λ={r['lambda']:<5g} {r['task']:<10} depth {r['depth']} (path {r['path']}), "
            f"{r['seconds']:.1f} s, {r['tokens']} tokens"
        )
        out.append(textwrap.indent(textwrap.shorten(str(r["answer"]), 300), "    "))
    return "\n".join(out)


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m asd_core.serve.demo", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", default="params/serving.yaml", help="serving parameter file")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.2, 5.0], help="λ values to try")
    ap.add_argument("--max-tokens", type=int, default=160, help="max_tokens per answer")
    args = ap.parse_args(argv)
    proc, url = start_server(args.config)
    try:
        rows = ask(url, args.lambdas, args.max_tokens)
    finally:
        code = stop_server(proc)
    print(show(rows))
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
    log.info("server stopped%s", "" if code in (0, -signal.SIGTERM) else f" (exit {code})")


if __name__ == "__main__":
    main()
