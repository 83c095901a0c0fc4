"""Run every notebook under `nbs/` as a pytest test, the way `nbdev-test` runs it.

One test per notebook (id = its path relative to the repo root, e.g. `nbs/core/schedule.ipynb`),
tutorials included. Each notebook runs in its own fresh Python process (no state shared between
notebooks: seeds, default dtype, thread counts, imported-and-patched modules), through nbdev's
own `nbdev.test.test_nb`, with:

- the notebook's folder as the working directory (as `nbdev-test` does),
- the cells flagged with `[tool.nbdev] tst_flags` (`notest slow`) skipped,
- `MPLBACKEND=Agg`, `HF_HUB_OFFLINE=1`, `IN_TEST=1` in the environment,
- nbdev's per-cell timeout (`cell_timeout` in `[tool.nbdev]`, default 600 s).

A failing notebook fails its test with the failing cell's source and traceback.
Files and folders starting with `_` or `.` are skipped, and so is every notebook in a folder
holding a `.notest` file, as with `nbdev-test`.

Environment knobs:
- `FISHERFAST_TEST_FLAGS="slow"`: also run the cells carrying these flags (like `nbdev-test --flags`).
- `FISHERFAST_NB_TIMEOUT=<s>`: wall-clock limit per notebook (default 1800 s).

Run: `.venv/bin/pytest` (all), `.venv/bin/pytest -k schedule` (one notebook).
"""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cfg():
    from nbdev.config import get_config
    return get_config(ROOT)


def find_notebooks():
    "The notebooks `nbdev-test` would test, sorted, as absolute paths"
    from nbdev.doclinks import nbglob
    nbs = Path(_cfg().nbs_path)
    if not nbs.exists(): return []
    files = nbglob(nbs, as_path=True, skip_folder_re=r'^[_.]', skip_file_re=r'^[_.]')
    return sorted(f.resolve() for f in files if not (f.parent / '.notest').exists())


# The child process: nbdev's `test_nb`, with its error report (written to `sys.__stderr__`) captured
# so that the parent can put it into the pytest failure.
_CHILD = r'''
import io, json, sys
args = json.loads(sys.argv[1])
from nbdev.test import test_nb
buf, real = io.StringIO(), sys.__stderr__
class _Tee(io.TextIOBase):
    def write(self, s): buf.write(s); return real.write(s)
    def flush(self): real.flush()
sys.__stderr__ = _Tee()
try: ok, secs = test_nb(args['fn'], skip_flags=args['skip'], force_flags=args['force'], basepath=args['root'],
                        cell_timeout=args['cell_timeout'])
finally: sys.__stderr__ = real
with open(args['report'], 'w') as f: json.dump({'ok': bool(ok), 'secs': secs, 'err': buf.getvalue()}, f)
sys.exit(0 if ok else 1)
'''


def run_notebook(fn, force_flags=None, timeout=None, tmpdir=None):
    "Run notebook `fn` like `nbdev-test` in a fresh process; returns `(ok, seconds, error_text, output)`"
    import tempfile
    fn = Path(fn).resolve()
    cfg = _cfg()
    skip = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags or [])
    if force_flags is None: force_flags = os.environ.get('FISHERFAST_TEST_FLAGS', '').split()
    if timeout is None: timeout = float(os.environ.get('FISHERFAST_NB_TIMEOUT', 1800))
    with tempfile.TemporaryDirectory(dir=tmpdir) as td:
        report = Path(td) / 'report.json'
        args = dict(fn=str(fn), skip=skip, force=list(force_flags), root=str(ROOT),
                    cell_timeout=int(cfg.get('cell_timeout', 600) or 0) or None, report=str(report))
        env = {**os.environ, 'MPLBACKEND': 'Agg', 'HF_HUB_OFFLINE': '1', 'IN_TEST': '1',
               'PYTHONPATH': os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
        try:
            p = subprocess.run([sys.executable, '-c', _CHILD, json.dumps(args)], cwd=fn.parent, env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b'').decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
            return False, timeout, f'{fn}: timed out after {timeout:.0f} s', out
        output = p.stdout + p.stderr
        if report.exists():
            r = json.loads(report.read_text())
            ok, secs, err = r['ok'] and p.returncode == 0, r['secs'], r['err']
        else:  # the child died before reporting (import error, segfault, OOM kill)
            ok, secs, err = False, 0., f'{fn}: test process exited with code {p.returncode}\n{output[-5000:]}'
        return ok, secs, err, output


def _rel(p):
    try: return str(Path(p).relative_to(ROOT))
    except ValueError: return str(p)


_NBS = find_notebooks()


@pytest.mark.parametrize('nb', _NBS, ids=[_rel(p) for p in _NBS])
def test_notebook(nb):
    ok, secs, err, output = run_notebook(nb)
    if not ok:
        pytest.fail(f'{_rel(nb)} failed after {secs:.1f} s:\n{err or output[-5000:]}', pytrace=False)
