/*
 * tests/fuzz.c - fuzz targets for llmgw's parsers (STYLE.md 21).
 *
 * Targets, each named after its corpus directory tests/corpus/<target>/:
 *   http     lg_http_parse_req / lg_http_parse_resp, then lg_http_framing
 *   json     lg_json_parse (against a reference validator), unescape, writer
 *   ini      lg_cfg_parse
 *   sse      lg_sse_next (whole buffer vs. byte by byte)
 *   chunked  lg_chunked_decode (whole vs. split vs. byte by byte)
 * Besides "does not crash", each target checks invariants; a broken one
 * aborts under libFuzzer (so the input is saved) and fails the file in
 * replay.
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

#include <dirent.h>
#include <sys/mman.h>
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

/* The same reference validator as tests/unit.c: is s[0..n) one complete
 * document (nesting up to LLMGW_JSON_DEPTH), and how many tokens? */
struct fz_ref {
	const char *s;
	size_t n, i;
	unsigned ntok;
	int depth;
};

static void fz_ref_ws(struct fz_ref *r)
{
	while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
		r->i++;
}

static int fz_ref_digit(struct fz_ref *r) { return r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9'; }

static int fz_ref_str(struct fz_ref *r)
{
	r->i++;
	while (r->i < r->n) {
		unsigned char c = (unsigned char)r->s[r->i++];
		if (c == '"') return 1;
		if (c < 0x20) return 0;
		if (c == '\\') {
			int k;
			if (r->i >= r->n) return 0;
			c = (unsigned char)r->s[r->i++];
			if (c == 'u') {
				for (k = 0; k < 4; k++, r->i++)
					if (r->i >= r->n || !isxdigit((unsigned char)r->s[r->i])) return 0;
			} else if (!c || !strchr("\"\\/bfnrt", c)) {
				return 0;
			}
		}
	}
	return 0;
}

static int fz_ref_value(struct fz_ref *r)
{
	fz_ref_ws(r);
	if (r->i >= r->n) return 0;
	r->ntok++;
	switch (r->s[r->i]) {
	case '{':
	case '[': {
		char close = r->s[r->i] == '{' ? '}' : ']';
		if (++r->depth > LLMGW_JSON_DEPTH) return 0;
		r->i++;
		fz_ref_ws(r);
		if (r->i < r->n && r->s[r->i] == close) {
			r->i++, r->depth--;
			return 1;
		}
		for (;;) {
			if (close == '}') {
				fz_ref_ws(r);
				if (r->i >= r->n || r->s[r->i] != '"') return 0;
				r->ntok++;
				if (!fz_ref_str(r)) return 0;
				fz_ref_ws(r);
				if (r->i >= r->n || r->s[r->i] != ':') return 0;
				r->i++;
			}
			if (!fz_ref_value(r)) return 0;
			fz_ref_ws(r);
			if (r->i >= r->n) return 0;
			if (r->s[r->i] == ',') {
				r->i++;
				continue;
			}
			if (r->s[r->i] != close) return 0;
			r->i++, r->depth--;
			return 1;
		}
	}
	case '"': return fz_ref_str(r);
	case 't': return r->n - r->i >= 4 && memcmp(r->s + r->i, "true", 4) == 0 ? (r->i += 4, 1) : 0;
	case 'f': return r->n - r->i >= 5 && memcmp(r->s + r->i, "false", 5) == 0 ? (r->i += 5, 1) : 0;
	case 'n': return r->n - r->i >= 4 && memcmp(r->s + r->i, "null", 4) == 0 ? (r->i += 4, 1) : 0;
	default:
		if (r->s[r->i] == '-') r->i++;
		if (r->i >= r->n) return 0;
		if (r->s[r->i] == '0')
			r->i++;
		else if (r->s[r->i] >= '1' && r->s[r->i] <= '9')
			while (fz_ref_digit(r)) r->i++;
		else
			return 0;
		if (r->i < r->n && r->s[r->i] == '.') {
			r->i++;
			if (!fz_ref_digit(r)) return 0;
			while (fz_ref_digit(r)) r->i++;
		}
		if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
			r->i++;
			if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-')) r->i++;
			if (!fz_ref_digit(r)) return 0;
			while (fz_ref_digit(r)) r->i++;
		}
		return 1;
	}
}

static int fz_ref_json(const char *s, size_t n, unsigned *ntok)
{
	struct fz_ref r;
	memset(&r, 0, sizeof r);
	r.s = s, r.n = n;
	if (!fz_ref_value(&r)) return 0;
	fz_ref_ws(&r);
	if (r.i != n) return 0;
	*ntok = r.ntok;
	return 1;
}

#define FZ_NTOK 8192
static struct lg_jtok fz_tok[FZ_NTOK];

static void fz_json(const char *s, size_t n)
{
	struct lg_json j, j0;
	unsigned rn = 0;
	int valid = fz_ref_json(s, n, &rn), r, r0, i;
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
			FZ_CHECK(fz_ref_json(s, k, &pn) ? pr == (int)pn : pr == LG_JSON_PARTIAL);
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

/* ===== targets ========================================================== */

static const struct {
	const char *name;
	void (*fn)(const char *, size_t);
} fz_targets[] = {
    {"http", fz_http}, {"json", fz_json}, {"ini", fz_ini}, {"sse", fz_sse}, {"chunked", fz_chunked},
};

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
		fprintf(stderr, "fuzz: set LLMGW_FUZZ_TARGET to http, json, ini, sse or chunked\n");
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

/* Each input is placed right before a PROT_NONE page, so an over-read
 * crashes even without ASan. */
static const char *fz_guard(const char *p, size_t n, void **map, size_t *maplen)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (n + page - 1) / page * page + page;
	char *m = (char *)mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || mprotect(m + len - page, page, PROT_NONE) != 0) {
		perror("mmap");
		exit(2);
	}
	*map = m, *maplen = len;
	if (n) memcpy(m + len - page - n, p, n);
	return m + len - page - n;
}

static int fz_passed, fz_failed;

static void fz_replay_file(const char *path, const char *target)
{
	void (*fn)(const char *, size_t) = fz_pick(target);
	size_t n = 0;
	int e = 0;
	char *data;
	void *map;
	size_t maplen;
	pid_t pid;
	int st = 0;
	if (!fn) {
		printf("FAIL %s: no fuzz target named '%s' (http, json, ini, sse, chunked)\n", path, target);
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
		fn(fz_guard(data, n, &map, &maplen), n);
		munmap(map, maplen);
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
		                "  replays every input; TARGET (http, json, ini, sse, chunked) is the name of\n"
		                "  the directory (of a file: of its parent directory)\n", argv[0]);
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
				printf("FAIL %s: no fuzz target named '%s' (http, json, ini, sse, chunked)\n", argv[a], tname);
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
