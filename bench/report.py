"""Markdown tables from a kiln-bench JSON document (for bench/RESULTS.md).

  python3 bench/report.py results.json [more.json ...]
"""
import json
import sys


def f(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{nd}f}" if abs(x) >= 1 else f"{x:.3g}"
    return str(x)


def err(v):
    return f"error: {v['error'][:120]}" if isinstance(v, dict) and "error" in v else None


def ingest(c):
    print(f"\n**Ingest** ({c['jobs']:,} jobs)\n")
    print("| system | seconds | jobs/s | note |\n|---|---:|---:|---|")
    k = c["kiln"]
    if err(k):
        print(f"| Kiln | – | – | {err(k)} |")
    else:
        print(f"| Kiln, durable (201 answered) | {f(k['submit_seconds'], 2)} | {f(k['durable_jobs_per_s'])} | body {k['body_bytes']:,} bytes |")
        hot = f", {k['jobs_hot_updates']:,} of {k['jobs_updates']:,} job updates HOT" if "jobs_updates" in k else ""
        print(f"| Kiln, durable and broker-confirmed | {f(k['seconds'], 2)} | {f(k['jobs_per_s'])} | queue depth {k['broker_queue_depth']:,}{hot} |")
    b = c.get("broker_floor")
    if b and not err(b):
        print(f"| RabbitMQ alone: confirmed publishes of one Kiln job message, all in flight | {f(b['seconds'], 2)} | {f(b['jobs_per_s'])} | {b['message_bytes']} bytes each |")
    for key, name in [("celery_no_confirm", "Celery apply_async, no confirms"),
                      ("celery_confirm", "Celery apply_async, publisher confirms")]:
        v = c.get(key)
        if v is None:
            continue
        if err(v):
            print(f"| {name} | – | – | {err(v)} |")
        else:
            print(f"| {name} | {f(v['seconds'], 2)} | {f(v['jobs_per_s'])} | Celery {v['celery']} |")
    print()
    sizes = c.get("kiln_by_size", {})
    if len(sizes) > 1:
        rates = ", ".join(f"{int(n):,} jobs: {f(v.get('relay_jobs_per_s'))} jobs/s" for n, v in sorted(sizes.items(), key=lambda kv: int(kv[0])))
        print(f"- the relay alone (201 to last confirm): {rates}; largest / smallest **{f(c.get('relay_rate_largest_over_smallest'), 2)}**")
    if "relay_of_broker_floor" in c:
        print(f"- the relay's rate over the broker's own: **{c['relay_of_broker_floor']:.2f}**")
    for key in ["speedup_vs_celery_confirm", "speedup_vs_celery_no_confirm"]:
        if key in c:
            print(f"- Kiln (confirmed) {key.replace('_', ' ').replace('speedup ', '')}: **{c[key]:.1f}×**")


def queue(c):
    print(f"\n**Queue overhead** ({c['jobs']:,} test-pattern jobs, {c['side']}×{c['side']})\n")
    print("| system | processes × slots | jobs/s | p50 s | p99 s | PNGs | vs Celery | of floor |\n|---|---|---:|---:|---:|---:|---:|---:|")
    sp = c.get("speedup_jobs_per_s", {})
    of = c.get("kiln_of_floor", {})
    ratio = lambda d, key: f(d.get(key), 2) + "×" if key in d else "–"
    for key, v in c.get("kiln", {}).items():
        if err(v):
            print(f"| Kiln | {key} | {err(v)} | | | | | |")
        else:
            print(f"| Kiln | {v['workers']} × {v['slots']} | {f(v['jobs_per_s'])} | {f(v['latency_p50_s'], 2)} | {f(v['latency_p99_s'], 2)} | {v['pngs_in_bucket']:,} | {ratio(sp, key)} | {ratio(of, key)} |")
    for key, v in c.get("celery", {}).items():
        if err(v):
            print(f"| Celery | {key} | {err(v)} | | | | | |")
        else:
            print(f"| Celery (prefork, prefetch 1) | {v['concurrency']} × 1 | {f(v['jobs_per_s'])} | {f(v['latency_p50_s'], 2)} | {f(v['latency_p99_s'], 2)} | {v.get('pngs_in_bucket', 0):,} | 1× | – |")
    for key, v in sorted(c.get("floor", {}).items(), key=lambda kv: kv[1].get("loops", 0) if isinstance(kv[1], dict) else 0):
        if err(v):
            print(f"| floor | {key} | {err(v)} | | | | | |")
        else:
            print(f"| floor (the services alone) | {v['loops']} loops | {f(v['jobs_per_s'])} | {f(v['latency_p50_s'], 2)} | {f(v['latency_p99_s'], 2)} | {v['pngs_in_bucket']:,} | – | 1× |")


def clip(c):
    print(f"\n**CLIP {c['model']} image embedding** ({c['dtype']})\n")
    print("| batch | Kiln images/s | transformers images/s | Kiln / transformers |\n|---:|---:|---:|---:|")
    kb = c["kiln"].get("batches", {})
    tb = c.get("transformers", {}).get("batches", {})
    for b in sorted(kb, key=int):
        print(f"| {b} | {f(kb[b]['images_per_s'], 2)} | {f(tb.get(b, {}).get('images_per_s'), 2)} | {f(c.get('speedup', {}).get(b), 2)}× |")


def vqgan(c):
    print(f"\n**VQGAN+CLIP step** ({c['cutn']} cutouts, CLIP {c['clip_dtype']})\n")
    print("| side | Kiln s/step | PyTorch s/step | Kiln / PyTorch time |\n|---:|---:|---:|---:|")
    ks = c["kiln"].get("sizes", {})
    ps = c.get("pytorch", {}).get("sizes", {})
    for s in sorted(ks, key=int):
        print(f"| {s} | {f(ks[s]['seconds_per_step'], 3)} | {f(ps.get(s, {}).get('seconds_per_step'), 3)} | {f(c.get('time_ratio_kiln_over_pytorch', {}).get(s), 2)} |")


def dalle(c):
    print(f"\n**DALL·E** ({c['dtype']})\n")
    print("| model | batch | Kiln s/image | min-dalle s/image | speedup |\n|---|---:|---:|---:|---:|")
    for m, per in c["kiln"].items():
        if err(per):
            print(f"| {m} | – | {err(per)} | | |")
            continue
        md = c.get("min_dalle", {}).get("models", {}).get(m, {})
        for b, v in sorted(per.items(), key=lambda kv: int(kv[0])):
            print(f"| {m} | {b} | {f(v['seconds_per_image'], 2)} | {f(md.get(b, {}).get('seconds_per_image'), 2)} | {f(c.get('speedup_per_image', {}).get(m, {}).get(b), 2)}× |")


for path in sys.argv[1:]:
    d = json.load(open(path))
    print(f"\n<!-- {path}: {d['command']} -->")
    print(f"Run {d['started'][:16]} UTC, {d['machine']['cpus']} × {d['machine']['cpu']}"
          f"{', ' + d['machine']['gpu'] if d['machine'].get('gpu') else ''}, {d['machine']['build']} build.")
    for name, c in d["cases"].items():
        la = d["load_average_1_5_15"].get(name, {})
        if err(c):
            print(f"\n**{name}**: {err(c)}")
            continue
        {"ingest": ingest, "queue": queue, "floor": queue, "clip": clip, "vqgan": vqgan, "dalle": dalle}[name](c)
        print(f"\n(load average before/after: {la.get('before')} / {la.get('after')}; wall {c.get('wall_seconds', 0):.0f} s)")
