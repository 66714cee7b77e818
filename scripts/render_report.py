"""Open a layout's report.html in headless Chromium and check that it renders.

    python scripts/render_report.py out/ [--screenshot report.png]

Checks the DOM that Chromium builds (every section heading present, every embedded plot decoded
to a non-empty image) and writes a screenshot. Exit status 0 when it renders, 1 otherwise.
Needs Debian's chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECTIONS = ["Summary", "Layers", "Arrays", "Placement", "Cost per inference",
            "Accuracy on simulated chips"]
# Runs in the page: report the natural size of every image once the page has loaded.
PROBE = ("<script>window.addEventListener('load',()=>{document.title='rendered:'+"
         "[...document.images].map(i=>i.naturalWidth+'x'+i.naturalHeight).join(',')})</script>")


def check(layout_dir: Path, screenshot: Path | None) -> list[str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return ["chromium is not installed (apt-get install chromium)"]
    page = (layout_dir / "report.html").read_text(encoding="utf-8")
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        profile = ["--user-data-dir=" + str(Path(tmp) / "profile")]
        dom = subprocess.run([browser, *FLAGS, *profile, "--virtual-time-budget=5000",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                             timeout=120).stdout
        for section in SECTIONS:
            if f"<h2>{section}</h2>" not in dom:
                problems.append(f"section '{section}' missing from the rendered page")
        title = dom.split("<title>", 1)[-1].split("</title>", 1)[0]
        if not title.startswith("rendered:"):
            problems.append("the page did not finish loading")
        else:
            sizes = [s for s in title.removeprefix("rendered:").split(",") if s]
            broken = [s for s in sizes if s.startswith("0x") or s.endswith("x0")]
            if broken:
                problems.append(f"{len(broken)} of {len(sizes)} images did not decode")
        if screenshot is not None:
            subprocess.run([browser, *FLAGS, *profile, "--window-size=1200,2400",
                            f"--screenshot={screenshot.resolve()}",
                            (layout_dir / "report.html").resolve().as_uri()],
                           capture_output=True, timeout=120)
            if not screenshot.is_file() or screenshot.stat().st_size == 0:
                problems.append("no screenshot was written")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("layout", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    problems = check(args.layout, args.screenshot)
    for problem in problems:
        print(f"render check: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.layout / 'report.html'} renders in headless Chromium")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
