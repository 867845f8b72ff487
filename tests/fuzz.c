/*
 * tests/fuzz.c - fuzz targets for llmgw's parsers and translators (STYLE.md 21).
 *
 * Targets, each named after its corpus directory tests/corpus/<target>/:
 *   http     lg_http_parse_req / lg_http_parse_resp, then lg_http_framing
 *   json     lg_json_parse (against a reference validator), unescape, writer
 *   ini      lg_cfg_parse
 *   sse      lg_sse_next (whole buffer vs. byte by byte)
 *   chunked  lg_chunked_decode (whole vs. split vs. byte by byte)
 *   canon    a client body: byte 0 picks the dialect (lg_dialects), the rest
 *            is the body, checked and tokenized as lg_srv_completion does;
 *            the dialect's canon, then lg_prov_build for every provider row
 *            (natively too where the gateway forwards natively): each
 *            upstream body is well-formed JSON (valid UTF-8 when the input
 *            was), its Content-Length right, and the same whether the
 *            request went to the other rows before (a fallback) or not
 *   stream   an upstream stream: byte 0 picks the provider row, byte 1 the
 *            client (bits 0-3: dialect; 0x10: it asks for usage; 0x20: for
 *            JSON, response_format; 0x40: AWS event-stream CRCs are fixed up
 *            first, so that the fuzzer gets past them), the rest is fed
 *            through the row's frame and event as lg_att_take feeds them,
 *            then ended as lg_att_end ends it: what the client got holds
 *            testlib's tl_check (chunked, whole SSE events, well-formed JSON,
 *            nothing after the end, an error event when it broke), and is
 *            the same fed whole, cut in two where the input says, and (up
 *            to 1 KB) byte by byte
 *   full     a whole provider answer: byte 0 the row, byte 1 the client (as
 *            for stream); row->full then the dialect's final (or its native
 *            rewrite): tl_check again
 *   evstream lg_evstream_frame, lg_frame_aws' decoder: byte 0 bit 0 fixes up
 *            the CRCs first; a frame it takes is at least 16 bytes, within
 *            the input, its views inside its headers and payload, taken
 *            again from exactly its bytes, and every prefix of the input
 *            (up to 1 KB, each against a guard page) says "more" until the
 *            frame is whole, then the same frame (a damaged one stays
 *            damaged); walking the input frame by frame
 *            never consumes more than it holds
 *   resp     lg_redis_parse, the state store's RESP2 reply parser: byte 0 is
 *            the largest bulk string allowed (0: LLMGW_STORE_MAX_REPLY);
 *            a reply it takes lies within the input, its values' strings
 *            inside it and its arrays' next indices nested right; every
 *            prefix (up to 1 KB, against a guard page) says "more" until
 *            the reply is whole, then the same reply (a bad one stays bad);
 *            replies one after another, as lg_redis_io reads them
 * Besides "does not crash", each target checks invariants; a broken one
 * aborts under libFuzzer (so the input is saved) and fails the file in
 * replay. The reference JSON validator, the guard pages and the
 * translation driver (a gateway with one provider per row, requests built
 * by hand, the attempt logic mirrored) are in tests/testlib.h, shared with
 * tests/golden.c; `build/golden --seeds DIR` writes its cases as seeds.
 *
 * libFuzzer (clang), one binary per target:
 *   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -DLLMGW_LIBFUZZER \
 *         -DLLMGW_FUZZ_TARGET=http -o build/fuzz-http tests/fuzz.c -lpthread
 *   build/fuzz-http -max_total_time=60 build/corpus-http tests/corpus/http
 *   (the target can also come from LLMGW_FUZZ_TARGET=http in the environment,
 *   or from the program name: build/fuzz-json fuzzes json)
 * Replay (any C99 compiler; `make test` runs it over every saved input):
 *   cc -std=c99 -O1 -g -fsanitize=address,undefined -o build/fuzz-replay tests/fuzz.c -lpthread
 *   build/fuzz-replay tests/corpus/http tests/corpus/json ...   (or single files)
 *   Prints one line per failing file, then "N passed, N failed"; a file
 *   passes when its target neither crashed nor broke an invariant (each
 *   file runs in a child process, so one crash does not stop the replay).
 * A crashing input found by the fuzzer goes into tests/corpus/<target>/ so
 * every later `make test` replays it.
 */
#define LLMGW_NO_MAIN
#include "../llmgw.c"
#include "testlib.h"

#include <dirent.h>
#include <sys/wait.h>

static int fz_bad; /* an invariant broke on the current input */

static void fz_fail(const char *file, int line, const char *expr)
{
	fprintf(stderr, "%s:%d: check failed: %s\n", file, line, expr);
	fz_bad = 1;
#ifdef LLMGW_LIBFUZZER
	abort();
#endif
}
#define FZ_CHECK(e) ((e) ? (void)0 : fz_fail(__FILE__, __LINE__, #e))

/* Exact-size heap blocks: ASan catches a read or write past their end. */
static char *fz_alloc(size_t n)
{
	char *d = (char *)malloc(n ? n : 1);
	if (!d) abort();
	return d;
}

static char *fz_dup(const char *p, size_t n)
{
	char *d = fz_alloc(n);
	if (n) memcpy(d, p, n);
	return d;
}

/* ===== http ============================================================= */

static int fz_tchar(int c) { return c > 0x20 && c < 0x7f && !strchr("\"(),/:;<=>?@[\\]{}", c); }

static void fz_http_check_views(const struct lg_http *m, const char *b, size_t hl)
{
	int i;
	size_t k;
	FZ_CHECK(m->nh >= 0 && m->nh <= LLMGW_MAX_HEADERS);
	for (i = 0; i < m->nh; i++) {
		lg_str nm = m->h[i].name, v = m->h[i].value;
		FZ_CHECK(nm.n > 0 && nm.p >= b && nm.p + nm.n <= b + hl);
		FZ_CHECK(v.n == 0 || (v.p >= b && v.p + v.n <= b + hl));
		for (k = 0; k < nm.n; k++) FZ_CHECK(fz_tchar((unsigned char)nm.p[k]));
		for (k = 0; k < v.n; k++) {
			unsigned char c = (unsigned char)v.p[k];
			FZ_CHECK(!((c < 0x20 && c != '\t') || c == 0x7f));
		}
		FZ_CHECK(v.n == 0 || (v.p[0] != ' ' && v.p[0] != '\t' && v.p[v.n - 1] != ' ' && v.p[v.n - 1] != '\t'));
	}
}

static void fz_http_framing(struct lg_http *m, int req)
{
	int f = lg_http_framing(m, req);
	FZ_CHECK(f == 0 || f == -1 || f == -2 || (req && f == -3));
	if (f == 0) {
		FZ_CHECK(m->clen >= -1);
		FZ_CHECK(!(m->chunked && m->clen >= 0)); /* chunked wins or it is an error */
		FZ_CHECK(m->close == 0 || m->close == 1);
	} else {
		FZ_CHECK(m->err != NULL);
	}
}

static void fz_http(const char *b, size_t n)
{
	struct lg_http m, m2;
	size_t k;
	int r = lg_http_parse_req(b, n, &m);
	FZ_CHECK(r == LG_HTTP_PARTIAL || r == LG_HTTP_ERR || r == LG_HTTP_TOOMANY || (r > 0 && (size_t)r <= n));
	if (r > 0) {
		size_t hl = (size_t)r;
		fz_http_check_views(&m, b, hl);
		FZ_CHECK(m.method.n > 0 && m.method.p >= b && m.method.p + m.method.n <= b + hl);
		FZ_CHECK(m.target.n > 0 && m.target.p >= b && m.target.p + m.target.n <= b + hl);
		for (k = 0; k < m.method.n; k++) FZ_CHECK(fz_tchar((unsigned char)m.method.p[k]));
		for (k = 0; k < m.target.n; k++) FZ_CHECK((unsigned char)m.target.p[k] > 0x20 && (unsigned char)m.target.p[k] < 0x7f);
		FZ_CHECK(m.minor >= 0 && m.minor <= 9);
		/* the head alone parses the same; cut anywhere it needs more */
		FZ_CHECK(lg_http_parse_req(b, hl, &m2) == r);
		if (hl <= 2048)
			for (k = 0; k < hl; k++) FZ_CHECK(lg_http_parse_req(b, k, &m2) == LG_HTTP_PARTIAL);
		/* the server's completeness test agrees (leading blank lines are a
		 * known disagreement: see unit test http/head_end_leading_blank_lines) */
		if (b[0] != '\r' && b[0] != '\n') FZ_CHECK(lg_http_head_end(b, n, 0) == hl);
		fz_http_framing(&m, 1);
	}
	r = lg_http_parse_resp(b, n, &m);
	FZ_CHECK(r == LG_HTTP_PARTIAL || r == LG_HTTP_ERR || r == LG_HTTP_TOOMANY || (r > 0 && (size_t)r <= n));
	if (r > 0) {
		fz_http_check_views(&m, b, (size_t)r);
		FZ_CHECK(m.status >= 0 && m.status <= 999);
		FZ_CHECK(lg_http_parse_resp(b, (size_t)r, &m2) == r);
		if ((size_t)r <= 2048)
			for (k = 0; k < (size_t)r; k++) FZ_CHECK(lg_http_parse_resp(b, k, &m2) == LG_HTTP_PARTIAL);
		FZ_CHECK(lg_http_head_end(b, n, 0) == (size_t)r);
		fz_http_framing(&m, 0);
	}
}

/* ===== json ============================================================= */

/* The reference validator: tl_ref_json (tests/testlib.h). */
#define FZ_NTOK 8192
static struct lg_jtok fz_tok[FZ_NTOK];

static void fz_json(const char *s, size_t n)
{
	struct lg_json j, j0;
	unsigned rn = 0;
	int valid = tl_ref_json(s, n, &rn), r, r0, i;
	memset(&j, 0, sizeof j);
	memset(&j0, 0, sizeof j0);
	j.t = fz_tok, j.cap = FZ_NTOK;
	r = lg_json_parse(&j, s, n);
	r0 = lg_json_parse(&j0, s, n);
	FZ_CHECK(r0 != LG_JSON_NOMEM);
	FZ_CHECK(r0 == r || r == LG_JSON_NOMEM);
	FZ_CHECK(r >= LG_JSON_PARTIAL);
	/* the tokenizer and the reference agree on what is a document */
	if (rn <= LLMGW_JSON_TOKENS) FZ_CHECK(valid == (r0 >= 0));
	if (r0 >= 0) FZ_CHECK((unsigned)r0 == rn);
	if (r0 == LG_JSON_ERR) {
		/* the error is where the input stops being a prefix of a document:
		 * cut just after it, the same error; cut before it, no error */
		struct lg_json j2;
		memset(&j2, 0, sizeof j2);
		FZ_CHECK(j0.err != NULL && j0.err_off < n);
		if (j0.err_off < n) {
			size_t off = j0.err_off;
			FZ_CHECK(lg_json_parse(&j2, s, off + 1) == LG_JSON_ERR && j2.err_off == off);
			FZ_CHECK(lg_json_parse(&j2, s, off) != LG_JSON_ERR);
		}
	}
	if (r >= 0 && n <= 512) { /* every strict prefix: PARTIAL or itself a document */
		size_t k;
		for (k = 0; k < n; k++) {
			struct lg_json j2;
			unsigned pn;
			int pr;
			memset(&j2, 0, sizeof j2);
			pr = lg_json_parse(&j2, s, k);
			FZ_CHECK(tl_ref_json(s, k, &pn) ? pr == (int)pn : pr == LG_JSON_PARTIAL);
		}
	}
	if (r <= 0) return;
	/* token invariants, accessors, and unescape/write round trips */
	for (i = 0; i < r; i++) {
		const struct lg_jtok *t = &fz_tok[i];
		FZ_CHECK(t->start <= t->end && t->end <= n && t->next > (uint32_t)i && t->next <= (uint32_t)r);
		if (t->type == LG_J_OBJ || t->type == LG_J_ARR) {
			uint32_t k = (uint32_t)i + 1, m;
			for (m = 0; m < t->size && k < (uint32_t)r; m++) {
				if (t->type == LG_J_OBJ) {
					FZ_CHECK(fz_tok[k].type == LG_J_STR && k + 1 < (uint32_t)r);
					if (k + 1 >= (uint32_t)r) return;
					k = fz_tok[k + 1].next;
				} else {
					FZ_CHECK(lg_json_at(&j, i, m) == (int)k);
					k = fz_tok[k].next;
				}
			}
			FZ_CHECK(m == t->size && k == t->next);
			(void)lg_json_get(&j, s, i, "model");
		} else if (t->type == LG_J_STR) {
			size_t en = t->end - t->start;
			char *in = fz_dup(s + t->start, en), *out = fz_alloc(en);
			long u = lg_json_unescape(in, en, out);
			FZ_CHECK(u >= 0 && (size_t)u <= en);
			if (u >= 0) {
				struct lg_buf b;
				struct lg_json jw;
				struct lg_jtok wt[2];
				lg_buf_init(&b, 0);
				FZ_CHECK(lg_json_wstr(&b, out, (size_t)u) == 0);
				memset(&jw, 0, sizeof jw);
				jw.t = wt, jw.cap = 2;
				if (lg_json_parse(&jw, b.p, b.len) == 1 && wt[0].type == LG_J_STR) {
					size_t wn = wt[0].end - wt[0].start;
					char *back = fz_alloc(wn);
					long u2 = lg_json_unescape(b.p + wt[0].start, wn, back);
					struct lg_buf fb; /* what was written: the text, ill-formed UTF-8 as U+FFFD */
					lg_str want = lg_utf8_fix(&fb, lg_str_of(out, (size_t)u));
					FZ_CHECK(u2 == (long)want.n && memcmp(back, want.p, want.n) == 0);
					FZ_CHECK(lg_utf8_valid(b.p, b.len));
					lg_buf_free(&fb);
					free(back);
				} else {
					FZ_CHECK(!"lg_json_wstr wrote something the tokenizer refuses");
				}
				lg_buf_free(&b);
			}
			free(in);
			free(out);
		} else if (t->type == LG_J_NUM) {
			(void)lg_json_num(&j, s, i, 0);
		}
	}
	/* last: it overwrites fz_tok */
	j.cap = (uint32_t)r - 1;
	FZ_CHECK(lg_json_parse(&j, s, n) == LG_JSON_NOMEM);
}

/* ===== ini ============================================================== */

/* file: secrets read whatever path the input names; keep the fuzzer away
 * from files that block or never end (/dev/stdin, /proc, FIFOs). */
static void fz_ini_defuse(char *t, size_t n)
{
	static const char *const bad[] = {"/dev", "/proc", "/sys", "/run", ".."};
	size_t i, k, e;
	for (i = 0; i + 5 <= n; i++) {
		if (memcmp(t + i, "file:", 5) != 0) continue;
		for (e = i; e < n && t[e] != '\n'; e++) {
		}
		for (k = 0; k < LG_COUNTOF(bad); k++) {
			size_t bl = strlen(bad[k]), q;
			for (q = i; q + bl <= e; q++)
				if (memcmp(t + q, bad[k], bl) == 0) t[i] = 'F'; /* "File:" is a literal secret */
		}
	}
}

static void fz_ini(const char *s, size_t n)
{
	char err[512], *t = fz_dup(s, n);
	struct lg_cfg *c;
	fz_ini_defuse(t, n);
	err[0] = 0;
	c = lg_cfg_parse(t, n, "fz.ini", err, sizeof err);
	if (c) {
		int i, k;
		FZ_CHECK(c->nlisten >= 1);
		for (i = 0; i < c->nmodels; i++)
			for (k = 0; k < c->models[i]->nt; k++) {
				const struct lg_target *t = &c->models[i]->t[k];
				FZ_CHECK(t->prov != NULL);
				FZ_CHECK(t->context >= 0 && t->max_output >= 0); /* see unit ini/target_number_overflow */
				FZ_CHECK(t->in >= 0 && t->out >= 0 && t->cache_read >= 0 && t->cache_write >= 0);
			}
		for (i = 0; i < c->nprov; i++) FZ_CHECK(c->prov[i]->name && c->prov[i]->name[0]);
		lg_cfg_free(c);
	} else {
		FZ_CHECK(strncmp(err, "fz.ini", 6) == 0 && strlen(err) > 8);
	}
	free(t);
}

/* ===== sse ============================================================== */

/* Appends each event with fields to out (lengths and bytes); returns the
 * bytes left unconsumed. */
static size_t fz_sse_drain(char *buf, size_t *have, struct lg_buf *out)
{
	for (;;) {
		struct lg_sse_ev ev;
		char *scratch = fz_alloc(*have);
		size_t k = lg_sse_next(buf, *have, &ev, scratch);
		FZ_CHECK(k <= *have);
		if (k == 0 || k > *have) {
			free(scratch);
			return *have;
		}
		FZ_CHECK(ev.ndata <= ev.fields);
		FZ_CHECK(ev.data.n == 0 || (ev.data.p >= buf && ev.data.p + ev.data.n <= buf + k) ||
		         (ev.data.p == scratch && ev.data.n <= *have));
		if (ev.fields) {
			lg_buf_printf(out, "[%d %zu %zu %zu]", ev.ndata, ev.event.n, ev.data.n, ev.id.n);
			lg_buf_adds(out, ev.event);
			lg_buf_adds(out, ev.data);
			lg_buf_adds(out, ev.id);
		}
		free(scratch);
		memmove(buf, buf + k, *have - k);
		*have -= k;
	}
}

static void fz_sse(const char *s, size_t n)
{
	struct lg_buf whole, bytes;
	char *buf = fz_dup(s, n), *inc;
	size_t have = n, left1, left2 = 0, i;
	lg_buf_init(&whole, 0);
	lg_buf_init(&bytes, 0);
	left1 = fz_sse_drain(buf, &have, &whole);
	if (n <= 4096) {
		inc = fz_alloc(n);
		for (i = 0; i < n; i++) {
			inc[left2++] = s[i];
			left2 = fz_sse_drain(inc, &left2, &bytes);
		}
		FZ_CHECK(left1 == left2);
		FZ_CHECK(whole.len == bytes.len && (whole.len == 0 || memcmp(whole.p, bytes.p, whole.len) == 0));
		free(inc);
	}
	lg_buf_free(&whole);
	lg_buf_free(&bytes);
	free(buf);
}

/* ===== chunked ========================================================== */

struct fz_ck {
	long ret;
	struct lg_buf out, rest;
};

/* Decodes s[0..n) in pieces ending at cuts[], each piece alone in an
 * exact-size copy. */
static void fz_ck_feed(const char *s, size_t n, const size_t *cuts, size_t ncuts, struct fz_ck *res)
{
	struct lg_chunked d;
	size_t from = 0, c;
	memset(&d, 0, sizeof d);
	res->ret = LG_HTTP_PARTIAL;
	lg_buf_init(&res->out, 0);
	lg_buf_init(&res->rest, 0);
	for (c = 0; c <= ncuts; c++) {
		size_t to = c < ncuts ? cuts[c] : n, len = to - from, got = len;
		char *b = fz_dup(s + from, len);
		long r = lg_chunked_decode(&d, b, &got);
		FZ_CHECK(r == LG_HTTP_ERR || r == LG_HTTP_PARTIAL || (r >= 0 && got + (size_t)r <= len));
		if (r == LG_HTTP_ERR) {
			res->ret = r;
			free(b);
			return;
		}
		FZ_CHECK(got <= len);
		lg_buf_add(&res->out, b, got);
		if (r >= 0) {
			res->ret = r;
			lg_buf_add(&res->rest, b + got, (size_t)r);
			lg_buf_add(&res->rest, s + to, n - to);
			free(b);
			return;
		}
		free(b);
		from = to;
	}
}

static int fz_ck_same(const struct fz_ck *a, const struct fz_ck *b)
{
	if ((a->ret == LG_HTTP_ERR) != (b->ret == LG_HTTP_ERR)) return 0;
	if (a->ret == LG_HTTP_ERR) return 1;
	if ((a->ret >= 0) != (b->ret >= 0)) return 0;
	return a->out.len == b->out.len && (a->out.len == 0 || memcmp(a->out.p, b->out.p, a->out.len) == 0) &&
	       a->rest.len == b->rest.len && (a->rest.len == 0 || memcmp(a->rest.p, b->rest.p, a->rest.len) == 0);
}

static void fz_ck_free(struct fz_ck *r)
{
	lg_buf_free(&r->out);
	lg_buf_free(&r->rest);
}

static void fz_chunked(const char *s, size_t n)
{
	struct fz_ck whole, split, bytes;
	size_t cut = n ? (unsigned char)s[0] * n / 256 : 0;
	fz_ck_feed(s, n, NULL, 0, &whole);
	fz_ck_feed(s, n, &cut, 1, &split);
	FZ_CHECK(fz_ck_same(&whole, &split));
	if (whole.ret >= 0) FZ_CHECK(whole.rest.len == (size_t)whole.ret);
	if (n <= 4096) {
		size_t *cuts = (size_t *)malloc((n ? n : 1) * sizeof *cuts), i;
		if (!cuts) abort();
		for (i = 0; i + 1 < n; i++) cuts[i] = i + 1;
		fz_ck_feed(s, n, cuts, n ? n - 1 : 0, &bytes);
		FZ_CHECK(fz_ck_same(&whole, &bytes));
		fz_ck_free(&bytes);
		free(cuts);
	}
	fz_ck_free(&whole);
	fz_ck_free(&split);
}

/* ===== translators: canon, stream, full (tests/testlib.h part 3) ======== */

static void fz_xl_setup(void)
{
	const char *e = tl_setup();
	if (e) {
		fprintf(stderr, "fuzz: the test gateway: %s\n", e);
		abort();
	}
}

/* The Content-Length of the head lg_prov_build wrote is the body's length. */
static void fz_check_upstream_head(const struct lg_req *r, lg_str body)
{
	const char *h = lg_buf_data(&r->up.req), *cl;
	size_t hn = (size_t)(body.p - h);
	char want[48];
	FZ_CHECK(body.p >= h && hn >= 4 && hn <= lg_buf_used(&r->up.req) && memcmp(h, "POST ", 5) == 0);
	snprintf(want, sizeof want, "\r\nContent-Length: %zu\r\n\r\n", body.n);
	cl = lg_memfind(h, hn, "\r\nContent-Length: ");
	FZ_CHECK(cl && (size_t)(h + hn - cl) == strlen(want) && memcmp(cl, want, strlen(want)) == 0);
}

static void fz_canon(const char *s, size_t n)
{
	const struct lg_dialect *d;
	struct tl_run shared;
	int row, native, utf8;
	if (!n) return;
	fz_xl_setup();
	d = &lg_dialects[(unsigned char)s[0] % TL_NDIALECTS];
	s++, n--;
	utf8 = lg_utf8_valid(s, n);
	if (tl_req(&shared, d, s, n, 1) < 0) { /* the server answers 400 before any translation */
		tl_done(&shared);
		return;
	}
	/* one request that goes to every row in turn, as fallbacks do, and a
	 * fresh one per row: the same upstream body */
	for (row = 0; row < TL_NROWS; row++)
		for (native = 0; native < 2; native++) {
			struct tl_run x;
			lg_str b1, b2;
			int k1, k2;
			if (native && !lg_native(shared.r, tl_cands[row].prov)) continue;
			k1 = tl_build(&shared, row, native, &b1);
			FZ_CHECK(k1 == 0 || k1 == -2);
			if (k1 == -2) FZ_CHECK(shared.r->canon_err[0] != 0);
			if (k1 == 0) {
				FZ_CHECK(tl_ref_json(b1.p, b1.n, NULL));
				if (utf8) FZ_CHECK(lg_utf8_valid(b1.p, b1.n));
				fz_check_upstream_head(shared.r, b1);
			}
			FZ_CHECK(tl_req(&x, d, s, n, 1) == 0);
			k2 = tl_build(&x, row, native, &b2);
			FZ_CHECK(k1 == k2);
			if (k1 == 0 && k2 == 0) FZ_CHECK(b1.n == b2.n && memcmp(b1.p, b2.p, b1.n) == 0);
			if (k1 == -2 && k2 == -2) FZ_CHECK(strcmp(shared.r->canon_err, x.r->canon_err) == 0);
			tl_done(&x);
		}
	tl_done(&shared);
}

/* AWS event-stream frames with their CRCs set right, so that mutations of
 * lengths, headers and payloads reach the decoder behind the CRC checks. */
static void fz_aws_fix(char *b, size_t n)
{
	size_t off = 0;
	while (n - off >= 12) {
		unsigned char *f = (unsigned char *)b + off;
		uint32_t total = lg_be32(f), c = lg_crc32(0, f, 8);
		f[8] = (unsigned char)(c >> 24), f[9] = (unsigned char)(c >> 16), f[10] = (unsigned char)(c >> 8);
		f[11] = (unsigned char)c;
		if (total < 16 || total > n - off) return;
		c = lg_crc32(0, f, total - 4);
		f[total - 4] = (unsigned char)(c >> 24), f[total - 3] = (unsigned char)(c >> 16);
		f[total - 2] = (unsigned char)(c >> 8), f[total - 1] = (unsigned char)c;
		off += total;
	}
}

/* The client of stream and full: byte 1 of their input. */
#define FZ_XL_USAGE 0x10
#define FZ_XL_JSON 0x20
#define FZ_XL_AWSFIX 0x40

/* One request of the client flags say, to row, answered with in[0..n)
 * cut at the ends of the pieces (cuts[]), then ended; the summary and the
 * client's bytes into o. 0, or -1 when the request cannot be made. */
static int fz_xl_run(int row, int flags, int stream, const char *in, size_t n, const size_t *cuts, size_t ncuts,
                     struct lg_buf *o)
{
	const struct lg_dialect *d = &lg_dialects[(flags & 15) % TL_NDIALECTS];
	struct lg_buf req;
	struct tl_run x;
	lg_str up;
	size_t from = 0, c;
	const char *bad;
	lg_buf_init(&req, 0);
	if (tl_client_body(d, stream, (flags & FZ_XL_USAGE ? TL_RQ_USAGE : 0) | (flags & FZ_XL_JSON ? TL_RQ_JSON : 0),
	                   &req) < 0) {
		lg_buf_free(&req);
		return -1;
	}
	FZ_CHECK(tl_req(&x, d, req.p, req.len, 1) == 0);
	FZ_CHECK(tl_build(&x, row, -1, &up) == 0);
	for (c = 0; c <= ncuts; c++) {
		size_t to = c < ncuts ? cuts[c] : n;
		char *piece = fz_dup(in + from, to - from); /* exact size: ASan sees an over-read */
		int k = tl_take(&x, piece, to - from);
		free(piece);
		from = to;
		if (k < 0) break;
	}
	tl_end(&x);
	if ((bad = tl_check(&x))) {
		lg_str out = tl_out(&x);
		size_t i;
		fprintf(stderr, "fuzz: %s (row %s, client %s%s, outcome: %s); the client got %zu bytes:\n",
		        bad, lg_prov_rows[row].name, d->name, x.r->native ? ", native" : "", x.outcome, out.n);
		for (i = 0; i < out.n && i < 4000; i++) {
			unsigned char ch = (unsigned char)out.p[i];
			if (ch == '\n' || (ch >= 0x20 && ch < 0x7f)) fputc(ch, stderr);
			else if (ch == '\r') fputs("\\r", stderr);
			else fprintf(stderr, "\\x%02x", ch);
		}
		fputc('\n', stderr);
		FZ_CHECK(!"what the client got breaks tl_check");
	}
	tl_summary(&x, o);
	lg_buf_adds(o, tl_out(&x));
	tl_done(&x);
	lg_buf_free(&req);
	return 0;
}

static int fz_same(const struct lg_buf *a, const struct lg_buf *b)
{
	return a->len == b->len && (!a->len || memcmp(a->p, b->p, a->len) == 0);
}

static void fz_stream(const char *s, size_t n)
{
	int row, flags;
	char *in;
	struct lg_buf whole, split;
	size_t cut, i;
	uint32_t h = 2166136261u;
	if (n < 2) return;
	fz_xl_setup();
	row = (unsigned char)s[0] % TL_NROWS;
	flags = (unsigned char)s[1];
	in = fz_dup(s + 2, n - 2);
	n -= 2;
	if ((flags & FZ_XL_AWSFIX) && lg_prov_rows[row].wire == LG_WIRE_BEDROCK) fz_aws_fix(in, n);
	lg_buf_init(&whole, 0);
	lg_buf_init(&split, 0);
	if (fz_xl_run(row, flags, 1, in, n, NULL, 0, &whole) == 0) {
		for (i = 0; i < n; i++) h = (h ^ (unsigned char)in[i]) * 16777619u;
		cut = n ? h % (n + 1) : 0;
		fz_xl_run(row, flags, 1, in, n, &cut, 1, &split);
		FZ_CHECK(fz_same(&whole, &split));
		if (n <= 1024) {
			size_t *cuts = (size_t *)malloc((n ? n : 1) * sizeof *cuts);
			if (!cuts) abort();
			for (i = 0; i + 1 < n; i++) cuts[i] = i + 1;
			split.len = 0;
			fz_xl_run(row, flags, 1, in, n, cuts, n ? n - 1 : 0, &split);
			FZ_CHECK(fz_same(&whole, &split));
			free(cuts);
		}
	}
	lg_buf_free(&whole);
	lg_buf_free(&split);
	free(in);
}

static void fz_full(const char *s, size_t n)
{
	struct lg_buf o;
	if (n < 2) return;
	fz_xl_setup();
	lg_buf_init(&o, 0);
	fz_xl_run((unsigned char)s[0] % TL_NROWS, (unsigned char)s[1], 0, s + 2, n - 2, NULL, 0, &o);
	lg_buf_free(&o);
}

/* ===== evstream ========================================================== */

/* v lies inside b[from..to) (or is empty) */
static int fz_within(lg_str v, const char *b, size_t from, size_t to)
{
	return v.n == 0 || (v.p >= b + from && v.p + v.n <= b + to);
}

static void fz_evstream(const char *s, size_t n)
{
	struct lg_evframe f, f2;
	const unsigned char *b;
	char *in;
	long k, prev = 0;
	size_t m, off;
	if (!n) return;
	in = fz_dup(s + 1, n - 1);
	n--;
	if (s[0] & 1) fz_aws_fix(in, n);
	b = (const unsigned char *)in;
	k = lg_evstream_frame(b, n, &f);
	FZ_CHECK(k >= -1 && k <= (long)n);
	if (k > 0) {
		uint32_t hl = lg_be32(b + 4);
		unsigned char *exact;
		FZ_CHECK(k >= 16 && (uint32_t)k == lg_be32(b) && 12 + (size_t)hl + 4 <= (size_t)k);
		FZ_CHECK(fz_within(f.event_type, in, 12, 12 + hl) && fz_within(f.message_type, in, 12, 12 + hl) &&
		         fz_within(f.exception_type, in, 12, 12 + hl));
		FZ_CHECK(f.payload.p == in + 12 + hl && f.payload.n == (size_t)k - 16 - hl);
		/* taken again from exactly its bytes, the same views */
		exact = (unsigned char *)fz_dup(in, (size_t)k);
		FZ_CHECK(lg_evstream_frame(exact, (size_t)k, &f2) == k);
		FZ_CHECK(f2.payload.n == f.payload.n && f2.event_type.n == f.event_type.n &&
		         f2.message_type.n == f.message_type.n && f2.exception_type.n == f.exception_type.n);
		FZ_CHECK(!f.event_type.n || f2.event_type.p - (const char *)exact == f.event_type.p - in);
		free(exact);
	} else if (k == 0) {
		FZ_CHECK(n < 12 || lg_be32(b) > n); /* more is needed: the frame is longer than what is here */
	}
	/* every prefix, right against a guard page: "more" (0) until the frame
	 * is whole, then that frame; a damaged prefix stays damaged */
	for (m = 0; m <= n && m <= 1024; m++) {
		const unsigned char *g = (const unsigned char *)tl_guard_at(1, in, m);
		long km = lg_evstream_frame(g, m, &f2);
		FZ_CHECK(km >= -1 && km <= (long)m);
		if (prev < 0) FZ_CHECK(km == -1);
		if (prev > 0) FZ_CHECK(km == prev);
		if (m < 12) FZ_CHECK(km == 0);
		prev = km;
	}
	if (n <= 1024) FZ_CHECK(prev == k);
	/* frame by frame, as lg_att_events walks a stream */
	for (off = 0; off < n;) {
		long kk = lg_evstream_frame(b + off, n - off, &f2);
		if (kk <= 0) break;
		FZ_CHECK((size_t)kk <= n - off);
		off += (size_t)kk;
	}
	FZ_CHECK(off <= n);
	free(in);
}

/* resp: see the top of the file */
static void fz_resp(const char *s, size_t n)
{
	struct lg_rv v[LG_RV_MAX], v2[LG_RV_MAX];
	size_t maxbulk, m, off;
	long k, prev = 0;
	int nv = 0, nv2 = 0, i;
	char *in;
	if (!n) return;
	maxbulk = (unsigned char)s[0] ? (unsigned char)s[0] : LLMGW_STORE_MAX_REPLY;
	in = fz_dup(s + 1, n - 1);
	n--;
	k = lg_redis_parse(in, n, v, LG_RV_MAX, &nv, maxbulk);
	FZ_CHECK(k >= -1 && k <= (long)n);
	if (k > 0) {
		FZ_CHECK(nv >= 1 && nv <= LG_RV_MAX && v[0].next == nv);
		for (i = 0; i < nv; i++) {
			FZ_CHECK(v[i].type >= LG_RV_STR && v[i].type <= LG_RV_ARR);
			FZ_CHECK(v[i].next > i && v[i].next <= nv);
			if (v[i].type == LG_RV_STR || v[i].type == LG_RV_ERR || v[i].type == LG_RV_BULK)
				FZ_CHECK(v[i].p >= in && v[i].p + v[i].len <= in + k && v[i].len <= maxbulk + 32);
			if (v[i].type == LG_RV_ARR) {
				int j = i + 1, c;
				for (c = 0; c < v[i].n && j < nv; c++) j = v[j].next;
				FZ_CHECK(c == v[i].n && j == v[i].next);
			} else {
				FZ_CHECK(v[i].next == i + 1);
			}
		}
	} else {
		FZ_CHECK(nv == 0);
	}
	for (m = 0; m <= n && m <= 1024; m++) { /* every prefix, right against a guard page */
		const char *g = (const char *)tl_guard_at(1, in, m);
		long km = lg_redis_parse(g, m, v2, LG_RV_MAX, &nv2, maxbulk);
		FZ_CHECK(km >= -1 && km <= (long)m);
		if (prev < 0) FZ_CHECK(km == -1);
		if (prev > 0) FZ_CHECK(km == prev && nv2 == nv);
		prev = km;
	}
	if (n <= 1024) FZ_CHECK(prev == k);
	for (off = 0; off < n;) { /* replies one after another */
		long kk = lg_redis_parse(in + off, n - off, v2, LG_RV_MAX, &nv2, maxbulk);
		if (kk <= 0) break;
		FZ_CHECK((size_t)kk <= n - off);
		off += (size_t)kk;
	}
	FZ_CHECK(off <= n);
	free(in);
}

/* ===== targets ========================================================== */

static const struct {
	const char *name;
	void (*fn)(const char *, size_t);
} fz_targets[] = {
    {"http", fz_http},     {"json", fz_json},     {"ini", fz_ini},   {"sse", fz_sse},
    {"chunked", fz_chunked}, {"canon", fz_canon}, {"stream", fz_stream}, {"full", fz_full},
    {"evstream", fz_evstream}, {"resp", fz_resp},
};

/* "http, json, ..." for messages */
static const char *fz_names(void)
{
	static char names[256];
	size_t i, at = 0;
	if (!names[0])
		for (i = 0; i < LG_COUNTOF(fz_targets); i++)
			at += lg_cpy(names + at, sizeof names - at, i ? ", " : ""),
			    at += lg_cpy(names + at, sizeof names - at, fz_targets[i].name);
	return names;
}

static void (*fz_pick(const char *name))(const char *, size_t)
{
	size_t i;
	for (i = 0; name && i < LG_COUNTOF(fz_targets); i++)
		if (strcmp(name, fz_targets[i].name) == 0) return fz_targets[i].fn;
	return NULL;
}

#ifdef LLMGW_LIBFUZZER

#define FZ_STR2(x) #x
#define FZ_STR(x) FZ_STR2(x)
static void (*fz_target)(const char *, size_t);

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *name = getenv("LLMGW_FUZZ_TARGET");
#ifdef LLMGW_FUZZ_TARGET
	if (!name) name = FZ_STR(LLMGW_FUZZ_TARGET);
#endif
	if (!name && *argc > 0) { /* build/fuzz-json -> json */
		const char *b = strrchr((*argv)[0], '/');
		b = b ? b + 1 : (*argv)[0];
		if (strncmp(b, "fuzz-", 5) == 0) name = b + 5;
	}
	fz_target = fz_pick(name);
	if (!fz_target) {
		fprintf(stderr, "fuzz: set LLMGW_FUZZ_TARGET to one of %s\n", fz_names());
		exit(2);
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = fz_dup((const char *)data, size);
	fz_target(copy, size);
	free(copy);
	return 0;
}

#else /* replay */

static int fz_passed, fz_failed;

static void fz_replay_file(const char *path, const char *target)
{
	void (*fn)(const char *, size_t) = fz_pick(target);
	size_t n = 0;
	int e = 0;
	char *data;
	pid_t pid;
	int st = 0;
	if (!fn) {
		printf("FAIL %s: no fuzz target named '%s' (%s)\n", path, target, fz_names());
		fz_failed++;
		return;
	}
	data = lg_read_file(path, 16u << 20, &n, &e);
	if (!data) {
		printf("FAIL %s: %s\n", path, strerror(e));
		fz_failed++;
		return;
	}
	/* in a child process: a crash or a sanitizer abort fails this input
	 * and the replay goes on with the next */
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		fz_bad = 0;
		/* right before a PROT_NONE page: an over-read crashes even without ASan */
		fn(tl_guard_at(0, data, n), n);
		tl_teardown();
		free(data);
		fflush(stderr);
		exit(fz_bad ? 1 : 0); /* exit: LeakSanitizer checks here */
	}
	free(data);
	if (pid < 0 || waitpid(pid, &st, 0) != pid) st = -1;
	if (st == 0) {
		fz_passed++;
	} else {
		if (WIFSIGNALED(st))
			printf("FAIL %s (%s): crashed with signal %d\n", path, target, WTERMSIG(st));
		else if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
			printf("FAIL %s (%s): a check failed or a sanitizer report above\n", path, target);
		else
			printf("FAIL %s (%s): exit status %d\n", path, target, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		fz_failed++;
	}
}

static const char *fz_base(const char *path, char *tmp, size_t len)
{
	const char *b;
	size_t n = strlen(path);
	while (n > 1 && path[n - 1] == '/') n--;
	snprintf(tmp, len, "%.*s", (int)n, path);
	b = strrchr(tmp, '/');
	return b ? b + 1 : tmp;
}

static int fz_skip(const struct dirent *d) { return d->d_name[0] != '.'; }

int main(int argc, char **argv)
{
	int a;
	if (argc < 2) {
		fprintf(stderr, "usage: %s tests/corpus/TARGET... | FILE...\n"
		                "  replays every input; TARGET (%s) is the name of\n"
		                "  the directory (of a file: of its parent directory)\n", argv[0], fz_names());
		return 2;
	}
	for (a = 1; a < argc; a++) {
		struct stat st;
		char tmp[4096];
		if (stat(argv[a], &st) != 0) {
			printf("FAIL %s: %s\n", argv[a], strerror(errno));
			fz_failed++;
			continue;
		}
		if (S_ISDIR(st.st_mode)) {
			struct dirent **ents;
			const char *target = fz_base(argv[a], tmp, sizeof tmp);
			char tname[64];
			int k, ne;
			snprintf(tname, sizeof tname, "%s", target);
			if (!fz_pick(tname)) {
				printf("FAIL %s: no fuzz target named '%s' (%s)\n", argv[a], tname, fz_names());
				fz_failed++;
				continue;
			}
			ne = scandir(argv[a], &ents, fz_skip, alphasort);
			for (k = 0; k < ne; k++) {
				char path[4096];
				snprintf(path, sizeof path, "%s/%s", argv[a], ents[k]->d_name);
				if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) fz_replay_file(path, tname);
				free(ents[k]);
			}
			if (ne >= 0) free(ents);
		} else {
			/* a file: the target is its directory's name */
			char dir[4096], *sl;
			snprintf(dir, sizeof dir, "%s", argv[a]);
			sl = strrchr(dir, '/');
			if (sl) *sl = 0;
			else snprintf(dir, sizeof dir, ".");
			fz_replay_file(argv[a], fz_base(dir, tmp, sizeof tmp));
		}
	}
	printf("%d passed, %d failed\n", fz_passed, fz_failed);
	return fz_failed ? 1 : 0;
}

#endif
