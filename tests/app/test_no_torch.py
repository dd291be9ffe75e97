"""The serving side never imports torch (the serving image does not have it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_app_imports_without_torch(bundle_path: Path) -> None:
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.main import create_app\n"
        "from app.settings import Settings\n"
        f"app = create_app(Settings(bundles=[{str(bundle_path)!r}]))\n"
        "with TestClient(app) as c:\n"
        "    assert c.get('/recommend/u').status_code == 200\n"
        "import training.cli\n"  # the CLI module, which hosts `seqrec serve`, must not pull torch either
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
