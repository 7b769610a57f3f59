"""How fast the inspector opens a large run and draws a long sample.

    python benchmarks/inspector.py [--samples 25000] [--tokens 48] [--long 4000] [--repeats 3]

Writes a synthetic run with the pipeline's own writer (`write_step`: step files plus the index)
of `--samples` samples of `--tokens` tokens, 64 per step, the last step holding one sample of
`--long` tokens, then measures, taking the median of `--repeats`:

* open (Python): `RunStore(DIR)`, reading the index (what `slipstream inspect DIR` does first);
* the command: `slipstream inspect DIR --port 0` in its own process, until it prints its URL;
* open (browser): headless Chromium loading the page until the table of all samples is drawn
  (page and scripts, /api/index of every row, parse, filter, sort, first page), on the page's
  own clock (performance.now() from navigation start);
* sort (browser): re-sorting all samples by max |gap| from the table header (the render);
* long sample (browser): drawing the `--long`-token sample in the token view: the drawing
  itself (TokenView.render) and the whole switch (the record fetched by id, drawn).

Targets (the issue): open under 1 s at 25,000 samples, a 4,000-token sample under 100 ms.
Needs /usr/bin/chromium and playwright for the browser figures; prints the Python one without.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slipstream.buffer.records import Sample, TrainedSample
from slipstream.buffer.rollout_log import write_step

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PER_STEP = 64


def _trained(rng: random.Random, step: int, index: int, tokens: int) -> TrainedSample:
    group = f"g{step:05d}{index // 8:02d}"
    sampler = tuple(math.log(rng.uniform(0.01, 1.0)) for _ in range(tokens))
    trainer = tuple(s + rng.uniform(-1e-3, 1e-3) for s in sampler)
    texts = tuple(rng.choice([" the", " 1", "2", " +", " answer", ".", " is"])
                  for _ in range(tokens))
    sample = Sample(f"{group}-{index % 8}", group, f"p{step}", (1, 2, 3), tuple(range(tokens)),
                    sampler, (step - 1,) * tokens, "prompt", "".join(texts), "stop", "12",
                    rng.random(), token_texts_T=texts)
    return TrainedSample(sample, step, step - 1, rng.uniform(-1, 1), trainer,
                         importance_weights_T=tuple(math.exp(t - s)
                                                    for t, s in zip(trainer, sampler)),
                         masked_T=(False,) * tokens, mask_reasons_T=("",) * tokens)


def make_run(root: Path, samples: int, tokens: int, long: int) -> tuple[str, int]:
    (root / "rollouts").mkdir(parents=True)
    (root / "config.json").write_text('{"deterministic": false}\n')
    rng = random.Random(0)
    steps = math.ceil(samples / PER_STEP)
    for step in range(1, steps + 1):
        count = min(PER_STEP, samples - (step - 1) * PER_STEP)
        records = [_trained(rng, step, i, long if (step == steps and i == 0) else tokens)
                   for i in range(count)]
        write_step(root / "rollouts", step, records)
    return records[0].sample.sample_id, steps


def time_python_open(root: Path, repeats: int) -> float:
    from slipstream.inspector.store import RunStore

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        store = RunStore(root)
        times.append(time.perf_counter() - started)
    print(f"open (Python, RunStore):      {statistics.median(times) * 1e3:8.1f} ms  "
          f"({len(store.rows)} samples)")
    return statistics.median(times)


def start_server(root: Path) -> tuple[subprocess.Popen, str, float]:
    """`slipstream inspect DIR` as a user runs it, in its own process; (process, URL, seconds
    from the command to the URL printed)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "slipstream.cli", "inspect", str(root),
                                "--port", "0", "--no-browser"], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    return process, line.split()[2], time.perf_counter() - started


def time_browser(root: Path, long_id: str, long_step: int, repeats: int) -> None:
    from playwright.sync_api import sync_playwright

    process, url, startup = start_server(root)
    print(f"command to URL printed:       {startup * 1e3:8.1f} ms  (slipstream inspect DIR)")
    opens, sorts, renders, switches = [], [], [], []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(url)                               # warm the browser once
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.close()
            for _ in range(repeats):
                page = browser.new_page()
                page.goto(url + "#view=samples")
                page.wait_for_selector("body[data-ready='1']", timeout=60_000)
                opens.append(float(page.get_attribute("body", "data-ready-ms")))
                page.click("a[data-sort='max_gap']")
                page.wait_for_selector("th.sorted a[data-sort='max_gap']")
                sorts.append(float(page.get_attribute("body", "data-render-ms")))
                page.evaluate(f"location.hash = 'view=sample&id={long_id}&step={long_step}'")
                page.wait_for_selector("#view-sample[data-render-ms]", timeout=60_000)
                switches.append(float(page.get_attribute("body", "data-render-ms")))
                renders.append(float(page.get_attribute("#view-sample", "data-render-ms")))
                tokens = page.locator("#tokens .tok").count()
                page.close()
            browser.close()
    finally:
        process.terminate()
        process.wait()
    print(f"open (navigation to table of all samples drawn): {statistics.median(opens):8.1f} ms")
    print(f"sort all samples by max |gap| (render):          {statistics.median(sorts):8.1f} ms")
    print(f"draw the {tokens}-token sample (TokenView.render): "
          f"{statistics.median(renders):8.1f} ms")
    print(f"open the {tokens}-token sample (fetch by id + draw): "
          f"{statistics.median(switches):8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=25_000)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slipstream-bench-") as tmp:
        root = Path(tmp) / "run"
        started = time.perf_counter()
        long_id, long_step = make_run(root, args.samples, args.tokens, args.long)
        size = (root / "rollouts" / "index.jsonl").stat().st_size / 2**20
        print(f"wrote {args.samples} samples in {time.perf_counter() - started:.1f} s "
              f"(index {size:.1f} MiB)")
        time_python_open(root, args.repeats)
        if Path(CHROMIUM).exists():
            time_browser(root, long_id, long_step, args.repeats)
        else:
            print(f"no {CHROMIUM}: browser figures skipped")


if __name__ == "__main__":
    main()
