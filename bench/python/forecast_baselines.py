"""Python baselines for `bench-forecast`, on exactly the windows the Rust bench wrote.

Reads windows (JSON lines: id, target, horizon, step_s, start_s, season, train, actual),
writes predictions (JSON lines: id, target, horizon, model, mean, lo80, hi80, lo95, hi95,
seconds, failed). Metrics are computed by the Rust side, with the same code for every model.

Models, all on one thread:
- statsforecast-mstl-autoets: MSTL (daily and weekly periods the window covers twice) with an
  AutoETS trend, on the window's own steps (5 minutes for 1h/1d, hourly for 1w);
- statsforecast-autoarima, statsforecast-autoets: season 24, on hourly data (1w windows);
- prophet-python: Prophet (daily and weekly seasonality), fitted on hourly means and spread
  over the steps, as umbra's Prophet is.
"""
import json
import logging
import math
import os
import sys
import time
import warnings

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from statsforecast.models import MSTL, AutoARIMA, AutoETS  # noqa: E402

warnings.filterwarnings("ignore")
logging.getLogger("prophet").setLevel(logging.ERROR)
logging.getLogger("cmdstanpy").disabled = True


def filled(values):
    y = np.array([v if v is not None and math.isfinite(v) else np.nan for v in values], dtype=float)
    s = pd.Series(y).interpolate(limit_direction="both")
    return s.fillna(0.0).to_numpy()


def sf_forecast(model, y, h):
    out = model.forecast(y=y, h=h, level=[80, 95])
    return out["mean"], out["lo-80"], out["hi-80"], out["lo-95"], out["hi-95"]


def mstl(w, y):
    day = w["season"]
    periods = [p for p in (day, 7 * day) if len(y) >= 2 * p]
    return sf_forecast(MSTL(season_length=periods, trend_forecaster=AutoETS(model="ZZN")), y, len(w["actual"]))


def autoarima(w, y):
    return sf_forecast(AutoARIMA(season_length=24), y, len(w["actual"]))


def autoets(w, y):
    return sf_forecast(AutoETS(season_length=24), y, len(w["actual"]))


def prophet(w, y):
    from prophet import Prophet

    per_hour = max(1, 3600 // w["step_s"])
    n = len(y) // per_hour * per_hour
    hourly = y[len(y) - n:].reshape(-1, per_hour).mean(axis=1)
    start = w["start_s"] + (len(y) - n) * w["step_s"]
    ds = pd.to_datetime(start + 3600 * np.arange(len(hourly)), unit="s")
    m = Prophet(daily_seasonality=True, weekly_seasonality=True, yearly_seasonality=False, interval_width=0.8)
    m.fit(pd.DataFrame({"ds": ds, "y": hourly}))
    h = len(w["actual"])
    hours = -(-h // per_hour)
    future = pd.DataFrame({"ds": pd.to_datetime(start + 3600 * (len(hourly) + np.arange(hours)), unit="s")})
    f80 = m.predict(future)
    samples = m.predictive_samples(future)["yhat"]
    f80["lo95"] = np.percentile(samples, 2.5, axis=1)
    f80["hi95"] = np.percentile(samples, 97.5, axis=1)
    spread = lambda col, f: np.repeat(f[col].to_numpy(), per_hour)[:h]  # noqa: E731
    return spread("yhat", f80), spread("yhat_lower", f80), spread("yhat_upper", f80), spread("lo95", f80), spread("hi95", f80)


MODELS = [
    ("statsforecast-mstl-autoets", mstl, lambda w: True),
    ("statsforecast-autoarima", autoarima, lambda w: w["step_s"] == 3600),
    ("statsforecast-autoets", autoets, lambda w: w["step_s"] == 3600),
    ("prophet-python", prophet, lambda w: True),
]


def main():
    src, dst = sys.argv[1], sys.argv[2]
    windows = [json.loads(line) for line in open(src)]
    # Warm-up: numba compiles on first use; compile time is not fit time.
    if windows:
        w0 = windows[0]
        y0 = filled(w0["train"])
        for _, fn, ok in MODELS:
            try:
                if ok(w0):
                    fn(w0, y0)
            except Exception:
                pass
    # Windows of one series and origin at the same step (1h and 1d) share one fit at the
    # longest horizon, as they do on the Rust side; its time is split between them.
    groups = {}
    for w in windows:
        groups.setdefault((w["id"], w["target"], w["step_s"]), []).append(w)
    with open(dst, "w") as out:
        for k, group in enumerate(groups.values()):
            longest = max(group, key=lambda w: len(w["actual"]))
            y = filled(longest["train"])
            for name, fn, ok in MODELS:
                if not ok(longest):
                    continue
                t = time.perf_counter()
                try:
                    result = fn(longest, y)
                    error = None
                except Exception as e:  # a failure is a result, not a crash
                    result, error = None, str(e)[:200]
                secs = (time.perf_counter() - t) / len(group)
                for w in group:
                    h = len(w["actual"])
                    rec = {"id": w["id"], "target": w["target"], "horizon": w["horizon"], "model": name, "seconds": secs}
                    if result is None:
                        rec.update(mean=[], lo80=[], hi80=[], lo95=[], hi95=[], failed=True, error=error)
                    else:
                        clip = lambda a: [max(0.0, float(v)) if math.isfinite(v) else 0.0 for v in a[:h]]  # noqa: E731
                        mean, lo80, hi80, lo95, hi95 = result
                        rec.update(mean=clip(mean), lo80=clip(lo80), hi80=clip(hi80), lo95=clip(lo95), hi95=clip(hi95), failed=False)
                    out.write(json.dumps(rec) + "\n")
            if (k + 1) % 10 == 0:
                print(f"  python: {k + 1}/{len(groups)} fits", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
