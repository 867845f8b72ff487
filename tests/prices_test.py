#!/usr/bin/env python3
"""llmgw price catalog tests (prices = FILE, section 5b), against a real llmgw process.

    python3 tests/prices_test.py [--gw build/llmgw-asan] [-k NAME]

A hand-made catalog in genai-prices' format (tiers, cache prices, dated prices, regex and
fallback providers) prices targets of a `type = openai` provider on tests/mockup.py, whose
usage-* scenarios give the token counts; each cost is checked against a hand-computed value
in the answer's usage.cost and the access log. The real catalog (build/genai-prices.json, made
by vendor/genai-prices.sh) is checked through `llmgw -t`. Prints "N passed, N failed".
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import acct_test as A  # noqa: E402  (its Gateway, on tests/mockup.py)
from harness import Fail, check, eq, expect_status, marker, ROOT  # noqa: E402

CTX = H.CTX
MOCK = None
GW = H.GW
VERBOSE = False

CATALOG = [
    {"id": "acme", "name": "Acme", "api_pattern": "https://api\\.acme\\.test", "models": [
        {"id": "tiered", "match": {"equals": "usage-cache-both"}, "prices": {
            "input_mtok": {"base": 2, "tiers": [{"start": 50, "price": 4}]},
            "output_mtok": {"base": 10, "tiers": [{"start": 50, "price": 20}]},
            "cache_read_mtok": 0.5,
            "cache_write_mtok": {"base": 2.5, "tiers": [{"start": 99, "price": 5}]}}},
        {"id": "below", "match": {"or": [{"starts_with": "usage-cached"}, {"equals": "nothing"}]},
         "prices": {"input_mtok": {"base": 1, "tiers": [{"start": 100, "price": 9}]}, "output_mtok": 3}},
        {"id": "dated", "match": {"regex": "^usage-(pla[a-z]n|x)\\d*$"}, "prices": [
            {"prices": {"input_mtok": 1, "output_mtok": 1}},
            {"constraint": {"type": "start_date", "start_date": "2020-01-01"},
             "prices": {"input_mtok": 3, "output_mtok": 5}},
            {"constraint": {"type": "start_date", "start_date": "2999-01-01"},
             "prices": {"input_mtok": 100, "output_mtok": 100}}]},
    ]},
    {"id": "other", "name": "Other", "api_pattern": "https://other\\.test",
     "fallback_model_providers": ["acme"], "models": []},
]

# usage-cache-both: prompt 100 (50 cache reads, 30 cache writes, 20 plain), completion 20
TIERED = (20 * 4 + 50 * 0.5 + 30 * 5 + 20 * 20) / 1e6          # every price past its tier
TIERED_OUT1 = (20 * 4 + 50 * 0.5 + 30 * 5 + 20 * 1) / 1e6      # out=1 on the target line
BELOW = (40 * 1 + 60 * 1 + 20 * 3) / 1e6     # usage-cached: 100 is not past 100; reads at input
DATED = (11 * 3 + 7 * 5) / 1e6               # usage-plain 11/7 at the 2020 prices


def write_catalog(g, data=None, text=None):
    path = os.path.join(g.dir, "prices.json")
    with open(path, "w") as f:
        f.write(text if text is not None else json.dumps(data or CATALOG))
    return path


BODY = """
[provider.acme]
type = openai
base_url = http://127.0.0.1:%(mp)d/v1
[provider.other]
type = openai
base_url = http://127.0.0.1:%(mp)d/v1
[model.tiered]
target = acme usage-cache-both
[model.tiered-out1]
target = acme usage-cache-both out=1
[model.below]
target = acme usage-cached
[model.dated]
target = acme usage-plain
[model.fallback]
target = other usage-cache-both
[model.missing]
target = acme usage-cache-write
[key.k]
secret = sk-k
"""


def priced_gateway():
    g = A.Gateway(body=BODY % {"mp": A.mock().port})
    g.gateway = "prices = %s" % write_catalog(g)
    g.write()
    return g


def cost_of(g, model):
    r = g.chat("sk-k", model, "price " + marker())
    expect_status(r, 200, model)
    got = (r.json().get("usage") or {}).get("cost")
    line = g.access([r.h("x-request-id")])[r.h("x-request-id")]
    H.near_usd(line.get("cost"), got, model + ": access log cost vs usage.cost")
    return got


def test_catalog_costs():
    """Tiers (input, output, cache write), cache read prices, a price override on the target,
    a dated price list, a regex rule and a fallback provider: usage.cost vs hand-computed."""
    g = priced_gateway().start()
    for model, want in (("tiered", TIERED), ("tiered-out1", TIERED_OUT1), ("below", BELOW),
                        ("dated", DATED), ("fallback", TIERED), ("missing", 0.0)):
        H.near_usd(cost_of(g, model), want, model + ": usage.cost")


def test_check_lists_prices_and_warns():
    """llmgw -t: each target with its price and where it came from; a warning for the target the
    catalog does not know."""
    g = priced_gateway()
    p = H.run_gw(["-t", "-c", g.cfg])
    out, err = p.stdout.decode(), p.stderr.decode()
    eq(p.returncode, 0, "llmgw -t status (stderr %s)" % err)
    for want in ("target acme usage-cache-both: in=2 out=10 cache_read=0.5 cache_write=2.5 "
                 "(above 50 prompt tokens: in=4 out=20) [catalog acme/tiered]",
                 "target acme usage-cache-both: in=2 out=1 cache_read=0.5 cache_write=2.5 "
                 "(above 50 prompt tokens: in=4 out=1) [ini+catalog acme/tiered]",
                 "target acme usage-plain: in=3 out=5 cache_read=3 cache_write=3 [catalog acme/dated]",
                 "target other usage-cache-both: in=2 out=10", "[catalog acme/tiered]",
                 "target acme usage-cache-write: in=0 out=0 cache_read=0 cache_write=0 [no price]"):
        check(want in out, "llmgw -t output lacks %r:\n%s" % (want, out))
    check("warning: model missing target acme usage-cache-write has no price" in err,
          "no warning for the unpriced target: %r" % err)
    check("tiered" not in err, "a warning for a priced target: %r" % err)


def test_malformed_catalog():
    """A malformed catalog: llmgw -t names the file, the line of prices = and the byte, line and
    column of the fault; a reload with it keeps the running config and its prices."""
    g = priced_gateway()
    bad = write_catalog(g, text='[{"id": "acme",\n  "models": [}]\n')
    p = H.run_gw(["-t", "-c", g.cfg])
    err = p.stderr.decode()
    eq(p.returncode, 1, "llmgw -t status on a malformed catalog")
    check("prices %s:" % bad in err and "(line 2, column 14)" in err and "at byte 29" in err,
          "error does not say where: %r" % err)
    write_catalog(g, text=json.dumps({"not": "a list"}))
    err = H.run_gw(["-t", "-c", g.cfg]).stderr.decode()
    check("not a genai-prices catalog" in err, "an object, not an array: %r" % err)
    write_catalog(g)
    g.gateway += "\nadmin_key = adm-1"
    g.write()
    g.start()
    H.near_usd(cost_of(g, "tiered"), TIERED, "before the reload")
    write_catalog(g, text='[{"id": "acme", "models": [ ]')
    r = H.request(g.port, "POST", "/admin/reload", b"", key="adm-1")
    eq(r.status, 500, "reload with a malformed catalog")
    check(b"reload failed" in r.body and b"unexpected end of input" in r.body and b"line 1, column 30" in r.body,
          "reload error: %r" % r.body[:400])
    H.near_usd(cost_of(g, "tiered"), TIERED, "after the failed reload: the old prices")


def test_real_catalog():
    """The pinned genai-prices data (vendor/genai-prices.sh): prices llmgw -t reports for some
    models, matched by provider name, by type and by dated model names, with their tiers."""
    data = os.path.join(ROOT, "build", "genai-prices.json")
    if not os.path.isfile(data):
        p = subprocess.run(["sh", os.path.join(ROOT, "vendor", "genai-prices.sh")], capture_output=True)
        check(p.returncode == 0, "vendor/genai-prices.sh failed: %s" % p.stderr.decode()[-1500:])
    g = A.Gateway(gateway="prices = %s" % data, body="""
[provider.anthropic]
type = anthropic
api_key = x
[provider.oa]
type = openai
api_key = x
[provider.gem]
type = gemini
api_key = x
[provider.local]
type = openai
base_url = http://127.0.0.1:9/v1
[model.m]
target = anthropic claude-sonnet-4-5
target = oa gpt-4o-mini
target = oa gpt-4o-2024-08-06
target = gem gemini-2.5-pro
target = local my-own-llama
""")
    p = H.run_gw(["-t", "-c", g.cfg])
    out, err = p.stdout.decode(), p.stderr.decode()
    eq(p.returncode, 0, "llmgw -t (%s)" % err)
    for want in ("anthropic claude-sonnet-4-5: in=3 out=15 cache_read=0.3 cache_write=3.75 "
                 "(above 200000 prompt tokens: in=6 out=22.5) [catalog anthropic/claude-sonnet-4-5]",
                 "oa gpt-4o-mini: in=0.15 out=0.6 cache_read=0.075 cache_write=0.15 [catalog openai/gpt-4o-mini]",
                 "oa gpt-4o-2024-08-06: in=2.5 out=10 cache_read=1.25 cache_write=2.5 [catalog openai/gpt-4o]",
                 "gem gemini-2.5-pro: in=1.25 out=10 cache_read=0.125 cache_write=1.25 "
                 "(above 200000 prompt tokens: in=2.5 out=15) [catalog google/gemini-2.5-pro]",
                 "local my-own-llama: in=0 out=0 cache_read=0 cache_write=0 [no price]"):
        check(want in out, "llmgw -t lacks %r:\n%s" % (want, out))
    check("target local my-own-llama has no price" in err, "no warning: %r" % err)


def teardown():
    if A.MOCK is not None:
        A.MOCK.stop()


if __name__ == "__main__":
    sys.exit(H.main(globals(), __doc__, teardown=teardown))
