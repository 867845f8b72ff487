/*
 * tests/unit.c - unit tests of llmgw's parsers and utilities.
 *
 * Build:  cc -std=c99 -Wall -Wextra -Werror -O1 -g -o build/unit tests/unit.c -lpthread
 *         (also with -fsanitize=address,undefined -fno-sanitize-recover=all, with clang,
 *         and with -DLLMGW_TLS=1 against BearSSL: `make unit`, `make test`)
 * Run:    build/unit [GROUP...]     only the named groups (build/unit -l lists them)
 *
 * The test file includes the implementation, so it reaches the static
 * functions without llmgw.c exporting them (STYLE.md 19). Parsers are fed
 * adversarially (STYLE.md 20): every valid input is also cut at every byte
 * (each strict prefix must say "need more", unless it is itself complete),
 * and inputs sit right against a PROT_NONE guard page, so reading one byte
 * past the end crashes instead of passing by luck.
 *
 * Counting: the last line, "N passed, N failed", counts TEST FUNCTIONS; a
 * test passes when every ASSERT in it held. ASSERT prints file:line: the
 * expression (and what case was running) and carries on, so one test
 * reports all its failing cases; the runner then goes on to the next test.
 * One line per group also gives the number of ASSERTs evaluated. Each test
 * runs in a child process: a crash, a sanitizer abort or a leak fails that
 * test only (-n runs them in-process, for a debugger; -l lists them).
 *
 * Tests that document a bug in llmgw.c carry its description in the
 * comment above them and fail until it is fixed.
 *
 * The limits are read from the macros, so the suite also runs against other
 * builds, e.g. -DLLMGW_MAX_HEADERS=1 -DLLMGW_JSON_DEPTH=2 -DLLMGW_IO_BUF=16
 * or -DLLMGW_JSON_TOKENS=300 (cases a small limit refuses are skipped).
 */
#define LLMGW_NO_MAIN
#include "../llmgw.c"
#include "testlib.h"

#include <sys/mman.h>
#include <sys/wait.h>

/* ===== framework ======================================================= */

static int ut_nchecks;      /* ASSERTs evaluated, in this group */
static int ut_nfail;        /* ASSERTs failed, in this test */
static const char *ut_name; /* "group/test" of the running test */
static char ut_ctx[600];    /* what case is running: printed with failures */

static int ut_check(int ok, const char *file, int line, const char *expr)
{
	ut_nchecks++;
	if (ok) return 1;
	if (ut_nfail++ < 25)
		printf("%s:%d: %s: ASSERT(%s) failed%s%s\n", file, line, ut_name, expr, ut_ctx[0] ? "  -- " : "",
		       ut_ctx);
	else if (ut_nfail == 26)
		printf("%s: more failures not shown\n", ut_name);
	fflush(stdout);
	return 0;
}

/* The one assertion. It is an expression (1 when it held), so a test can
 * stop where going on would crash: if (!ASSERT(c != NULL)) return; */
#define ASSERT(e) ut_check((e) ? 1 : 0, __FILE__, __LINE__, #e)

static void ut_case(const char *fmt, ...) LG_PRINTF(1, 2);
static void ut_case(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ut_ctx, sizeof ut_ctx, fmt, ap);
	va_end(ap);
}

/* p[0..n) as a C literal, for messages (four rotating buffers). */
static const char *ut_esc(const void *vp, size_t n)
{
	static char bufs[4][400];
	static int k;
	const unsigned char *p = (const unsigned char *)vp;
	char *o = bufs[k = (k + 1) & 3], *e = o + sizeof bufs[0] - 12;
	size_t i;
	*o++ = '"';
	for (i = 0; i < n && o < e; i++) {
		unsigned char c = p[i];
		if (c == '\n') *o++ = '\\', *o++ = 'n';
		else if (c == '\r') *o++ = '\\', *o++ = 'r';
		else if (c == '\t') *o++ = '\\', *o++ = 't';
		else if (c == '"' || c == '\\') *o++ = '\\', *o++ = (char)c;
		else if (c < 0x20 || c >= 0x7f) o += sprintf(o, "\\x%02x", c);
		else *o++ = (char)c;
	}
	if (i < n) o += sprintf(o, "...(%zu)", n);
	*o++ = '"';
	*o = 0;
	return bufs[k];
}
#define UT_ESCZ(z) ut_esc((z), strlen(z))

/* Guard pages (tl_guard_at) and the reference JSON validator (tl_ref_json)
 * are tests/testlib.h's, shared with tests/fuzz.c and tests/golden.c. */
#define ut_guard_at tl_guard_at
#define ut_ref_json tl_ref_json
#define ut_guard(p, n) ut_guard_at(0, (p), (n))

/* A string and its length, for tables whose inputs may hold NUL bytes. */
#define S(lit) lit, sizeof(lit) - 1

/* ===== json: the tokenizer ============================================= */

#define UT_NTOK 4096
static struct lg_jtok ut_tok[UT_NTOK];

/* Tokenizes s[0..n) placed against the guard page; *at gets the copy. */
static int ut_jparse(struct lg_json *j, const char *s, size_t n, struct lg_jtok *t, uint32_t cap,
                     const char **at)
{
	const char *g = ut_guard(s, n);
	memset(j, 0, sizeof *j);
	j->t = t;
	j->cap = cap;
	if (at) *at = g;
	return lg_json_parse(j, g, n);
}

/* Checks every invariant of a token array for the document s[0..n). */
static void ut_jtree(const struct lg_json *j, const char *s, size_t n, int ntok)
{
	int i;
	size_t a = 0, b = n;
	lg_str root;
	while (a < n && strchr(" \t\r\n", s[a])) a++;
	while (b > a && strchr(" \t\r\n", s[b - 1])) b--;
	if (!ASSERT(ntok >= 1)) return;
	root = lg_json_span(j, s, 0);
	ASSERT(root.p == s + a && root.n == b - a);
	ASSERT(j->t[0].next == (uint32_t)ntok);
	for (i = 0; i < ntok; i++) {
		const struct lg_jtok *t = &j->t[i];
		lg_str raw;
		if (!ASSERT(t->start <= t->end && t->end <= n && t->next > (uint32_t)i &&
		            t->next <= (uint32_t)ntok))
			return;
		raw = lg_json_raw(j, s, i);
		switch (t->type) {
		case LG_J_STR:
			ASSERT(t->start >= 1 && s[t->start - 1] == '"' && t->end < n && s[t->end] == '"');
			ASSERT(t->next == (uint32_t)i + 1 && t->size == 0);
			ASSERT(lg_json_span(j, s, i).p == s + t->start - 1 && lg_json_span(j, s, i).n == raw.n + 2);
			break;
		case LG_J_NUM: {
			char tmp[400];
			ASSERT(t->next == (uint32_t)i + 1 && raw.n > 0);
			if (raw.n < sizeof tmp) {
				memcpy(tmp, raw.p, raw.n);
				tmp[raw.n] = 0;
				if (raw.n < 64) ASSERT(lg_json_num(j, s, i, -12345) == strtod(tmp, NULL));
			}
			break;
		}
		case LG_J_TRUE: ASSERT(raw.n == 4 && memcmp(raw.p, "true", 4) == 0); break;
		case LG_J_FALSE: ASSERT(raw.n == 5 && memcmp(raw.p, "false", 5) == 0); break;
		case LG_J_NULL: ASSERT(raw.n == 4 && memcmp(raw.p, "null", 4) == 0); break;
		case LG_J_OBJ:
		case LG_J_ARR: {
			uint32_t k = (uint32_t)i + 1, m;
			int obj = t->type == LG_J_OBJ;
			ASSERT(raw.n >= 2 && raw.p[0] == (obj ? '{' : '[') && raw.p[raw.n - 1] == (obj ? '}' : ']'));
			for (m = 0; m < t->size && k < (uint32_t)ntok; m++) {
				const struct lg_jtok *c = &j->t[k];
				ASSERT(c->start > t->start && c->end < t->end);
				if (obj) {
					char key[256];
					int g;
					ASSERT(c->type == LG_J_STR && c->next == k + 1);
					if (c->end - c->start < sizeof key && !memchr(s + c->start, 0, c->end - c->start)) {
						memcpy(key, s + c->start, c->end - c->start);
						key[c->end - c->start] = 0;
						g = lg_json_get(j, s, i, key);
						/* the first member with that key: maybe an earlier one */
						ASSERT(g >= i + 2 && (uint32_t)g <= k + 1 &&
						       j->t[g - 1].end - j->t[g - 1].start == c->end - c->start &&
						       memcmp(s + j->t[g - 1].start, key, c->end - c->start) == 0);
					}
					ASSERT(lg_json_at(j, i, m) == -1);
					if (!ASSERT(k + 1 < (uint32_t)ntok)) return;
					k = j->t[k + 1].next;
				} else {
					ASSERT(lg_json_at(j, i, m) == (int)k);
					ASSERT(lg_json_get(j, s, i, "a") == -1);
					k = c->next;
				}
			}
			ASSERT(m == t->size && k == t->next);
			if (!obj) ASSERT(lg_json_at(j, i, t->size) == -1);
			break;
		}
		default: ASSERT(!"token type"); break;
		}
	}
}

/* Everything a valid document must satisfy: its count; the count-only
 * pass agrees; a token array one too small says NOMEM; each strict prefix
 * is PARTIAL, or, if it is itself a complete document (as "12" of "123"),
 * parses to what the reference validator counts. */
static void ut_json_valid1(const char *s, size_t n, int want)
{
	struct lg_json j;
	const char *g;
	unsigned rn = 0;
	size_t k;
	int r;
	ut_case("json %s", ut_esc(s, n));
	ASSERT(ut_ref_json(s, n, &rn) && (int)rn == want); /* the oracle agrees with the table */
	r = ut_jparse(&j, s, n, ut_tok, UT_NTOK, &g);
	ut_case("json %s: got %d (%s at %zu)", ut_esc(s, n), r, j.err ? j.err : "-", j.err_off);
	if (!ASSERT(r == want && j.n == (uint32_t)want && j.err == NULL)) return;
	ut_jtree(&j, g, n, r);
	ASSERT(ut_jparse(&j, s, n, NULL, 0, NULL) == want);
	ASSERT(ut_jparse(&j, s, n, ut_tok, (uint32_t)want, NULL) == want);
	ASSERT(ut_jparse(&j, s, n, ut_tok, (uint32_t)want - 1, NULL) == LG_JSON_NOMEM);
	ASSERT(ut_jparse(&j, s, n, ut_tok, 0, NULL) == LG_JSON_NOMEM);
	for (k = 0; k < n; k++) {
		int exp = ut_ref_json(s, k, &rn) ? (int)rn : LG_JSON_PARTIAL;
		r = ut_jparse(&j, s, k, ut_tok, UT_NTOK, &g);
		ut_case("json %s cut to %zu bytes: got %d, want %d", ut_esc(s, n), k, r, exp);
		ASSERT(r == exp);
		if (r > 0) ut_jtree(&j, g, k, r);
		ASSERT(ut_jparse(&j, s, k, NULL, 0, NULL) == exp);
	}
}

static const struct {
	const char *s;
	int ntok;
} ut_json_ok[] = {
    /* numbers in every legal form */
    {"0", 1}, {"-0", 1}, {"7", 1}, {"-1", 1}, {"123", 1}, {"1.5", 1}, {"-1.5e10", 1}, {"1e5", 1},
    {"1E5", 1}, {"1e+5", 1}, {"1E-5", 1}, {"1.0E-0", 1}, {"0.0", 1}, {"0e0", 1}, {"-0.0e+00", 1},
    {"0.000001", 1}, {"123456789012345678901234567890", 1}, {"1.7976931348623157e308", 1},
    {"5e-324", 1}, {"10", 1}, {"-10.01e-10", 1},
    /* literals, whitespace */
    {"true", 1}, {"false", 1}, {"null", 1}, {" true ", 1}, {"\t\n\r null \n", 1}, {"\r\n1\r\n", 1},
    /* strings */
    {"\"\"", 1}, {"\"abc\"", 1}, {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 1},
    {"\"\\u0041\\u00e9\\u20AC\\ud83d\\ude00\"", 1}, {"\"\\uD800\"", 1}, {"\"\\udfff x\"", 1},
    {"\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"", 1}, {"\"\x7f\"", 1}, {"\"\xff\xfe\"", 1},
    {"\"a b\\tc\"", 1}, {"\"[{,:}]\"", 1}, {"\"\\\\\"", 1}, {"\"\\/\"", 1},
    /* containers */
    {"[]", 1}, {"{}", 1}, {"[ ]", 1}, {"{ \n }", 1}, {"[1]", 2}, {"[1,2,3]", 4}, {"[[[]]]", 3},
    {"[{}]", 2}, {"[[],[]]", 3}, {"{\"a\":1}", 3}, {"{\"\":\"\"}", 3}, {"{\"a\":{}}", 3},
    {"{\"a\":{\"b\":[1,{\"c\":null}]}}", 9}, {"[\"a\",true,false,null,-1.5e3,{},[]]", 8},
    {" { \"a\" : [ 1 , 2 ] , \"b\" : { } } ", 7}, {"{\"a\":1,\"a\":2}", 5}, {"[-0]", 2},
    {"[0,1e1,2.5]", 4}, {"{\"x\":[\"\\u005d\",\"]\"]}", 5}, {"[\"\\\"\"]", 2},
    {"{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":\"Be terse.\"},"
     "{\"role\":\"user\",\"content\":\"Hi \\u00e9\\n\"}],\"stream\":true,\"temperature\":0.2,"
     "\"max_tokens\":256,\"stop\":null,\"stream_options\":{\"include_usage\":true}}",
     27},
    {"{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":"
     "{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":\"stop\"}],\"usage\":"
     "{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18,"
     "\"prompt_tokens_details\":{\"cached_tokens\":0}}}",
     30},
};

/* Bracket depth outside strings: cases deeper than a small
 * -DLLMGW_JSON_DEPTH are skipped (they are errors then: see json/depth). */
static int ut_json_depth(const char *s)
{
	int d = 0, max = 0, in = 0;
	for (; *s; s++) {
		if (in) {
			if (*s == '\\' && s[1]) s++;
			else if (*s == '"') in = 0;
		} else if (*s == '"') {
			in = 1;
		} else if (*s == '[' || *s == '{') {
			max = LG_MAX(max, ++d);
		} else if (*s == ']' || *s == '}') {
			d--;
		}
	}
	return max;
}

static void t_json_valid(void)
{
	size_t i;
	for (i = 0; i < LG_COUNTOF(ut_json_ok); i++) {
		char tmp[1024];
		size_t n = strlen(ut_json_ok[i].s);
		if (ut_json_depth(ut_json_ok[i].s) > LLMGW_JSON_DEPTH) continue;
		ut_json_valid1(ut_json_ok[i].s, n, ut_json_ok[i].ntok);
		/* the same document with whitespace around it */
		snprintf(tmp, sizeof tmp, " \t\r\n%s\n ", ut_json_ok[i].s);
		ut_json_valid1(tmp, n + 6, ut_json_ok[i].ntok);
	}
}

/* Nesting right at LLMGW_JSON_DEPTH is fine; one more is an error at the
 * offending bracket. */
static void t_json_depth(void)
{
	static char buf[8 * LLMGW_JSON_DEPTH + 64];
	struct lg_json j;
	size_t n = 0;
	int d, r;
	for (d = 0; d < LLMGW_JSON_DEPTH; d++) buf[n++] = '[';
	for (d = 0; d < LLMGW_JSON_DEPTH; d++) buf[n++] = ']';
	ut_json_valid1(buf, n, LLMGW_JSON_DEPTH);
	n = 0;
	for (d = 0; d <= LLMGW_JSON_DEPTH; d++) buf[n++] = '[';
	for (d = 0; d <= LLMGW_JSON_DEPTH; d++) buf[n++] = ']';
	r = ut_jparse(&j, buf, n, ut_tok, UT_NTOK, NULL);
	ut_case("arrays nested %d deep: got %d at %zu", LLMGW_JSON_DEPTH + 1, r, j.err_off);
	ASSERT(r == LG_JSON_ERR && j.err_off == LLMGW_JSON_DEPTH);
	ASSERT(ut_jparse(&j, buf, n, NULL, 0, NULL) == LG_JSON_ERR && j.err_off == LLMGW_JSON_DEPTH);
	/* objects: {"a":{"a":...1...}} */
	n = 0;
	for (d = 0; d < LLMGW_JSON_DEPTH; d++) memcpy(buf + n, "{\"a\":", 5), n += 5;
	buf[n++] = '1';
	for (d = 0; d < LLMGW_JSON_DEPTH; d++) buf[n++] = '}';
	ut_json_valid1(buf, n, 2 * LLMGW_JSON_DEPTH + 1);
	n = 0;
	for (d = 0; d <= LLMGW_JSON_DEPTH; d++) memcpy(buf + n, "{\"a\":", 5), n += 5;
	buf[n++] = '1';
	for (d = 0; d <= LLMGW_JSON_DEPTH; d++) buf[n++] = '}';
	r = ut_jparse(&j, buf, n, ut_tok, UT_NTOK, NULL);
	ut_case("objects nested %d deep: got %d at %zu", LLMGW_JSON_DEPTH + 1, r, j.err_off);
	ASSERT(r == LG_JSON_ERR && j.err_off == 5 * LLMGW_JSON_DEPTH);
}

/* "[0,0,...,0]" with ntok tokens (the array and ntok - 1 elements). */
static char *ut_json_flat(size_t ntok, size_t *n)
{
	size_t i, len = 2 * ntok - 1;
	char *s = (char *)malloc(len);
	if (!s) return NULL;
	s[0] = '[';
	for (i = 1; i < len - 1; i += 2) s[i] = '0', s[i + 1] = ',';
	s[len - 1] = ']';
	*n = len;
	return s;
}

/* Exactly LLMGW_JSON_TOKENS tokens pass; one more is an error at the value
 * that would be one too many. */
static void t_json_token_limit(void)
{
	struct lg_json j;
	size_t n;
	char *s = ut_json_flat(LLMGW_JSON_TOKENS, &n);
	int r;
	if (!ASSERT(s != NULL)) return;
	r = ut_jparse(&j, s, n, NULL, 0, NULL);
	ut_case("%zu bytes, got %d", n, r);
	ASSERT(r == LLMGW_JSON_TOKENS);
	free(s);
	s = ut_json_flat(LLMGW_JSON_TOKENS + 1, &n);
	if (!ASSERT(s != NULL)) return;
	r = ut_jparse(&j, s, n, NULL, 0, NULL);
	ut_case("one token over the limit: got %d at %zu", r, j.err_off);
	ASSERT(r == LG_JSON_ERR && j.err_off == 2 * (size_t)LLMGW_JSON_TOKENS - 1 && j.err && strstr(j.err, "too many"));
	free(s);
}

/* Token types, offsets, sizes and next pointers, exactly. */
static void t_json_tokens(void)
{
	static const char doc[] = "{\"a\":[1,\"x\"],\"b\":{}}";
	static const struct lg_jtok want[] = {
	    {0, 20, 7, 2, LG_J_OBJ}, {2, 3, 2, 0, LG_J_STR}, {5, 12, 5, 2, LG_J_ARR}, {6, 7, 4, 0, LG_J_NUM},
	    {9, 10, 5, 0, LG_J_STR}, {14, 15, 6, 0, LG_J_STR}, {17, 19, 7, 0, LG_J_OBJ},
	};
	struct lg_json j;
	const char *s;
	int r = ut_jparse(&j, doc, sizeof doc - 1, ut_tok, UT_NTOK, &s), i;
	lg_str v;
	if (!ASSERT(r == 7)) return;
	for (i = 0; i < 7; i++) {
		ut_case("token %d", i);
		ASSERT(ut_tok[i].start == want[i].start && ut_tok[i].end == want[i].end);
		ASSERT(ut_tok[i].next == want[i].next && ut_tok[i].size == want[i].size);
		ASSERT(ut_tok[i].type == want[i].type);
	}
	ut_case("accessors");
	ASSERT(lg_json_get(&j, s, 0, "a") == 2);
	ASSERT(lg_json_get(&j, s, 0, "b") == 6);
	ASSERT(lg_json_get(&j, s, 0, "c") == -1);
	ASSERT(lg_json_get(&j, s, 0, "") == -1);
	ASSERT(lg_json_get(&j, s, 0, "ab") == -1);
	ASSERT(lg_json_get(&j, s, 2, "a") == -1); /* not an object */
	ASSERT(lg_json_get(&j, s, -1, "a") == -1);
	ASSERT(lg_json_get(&j, s, 6, "a") == -1); /* empty object */
	ASSERT(lg_json_at(&j, 2, 0) == 3 && lg_json_at(&j, 2, 1) == 4 && lg_json_at(&j, 2, 2) == -1);
	ASSERT(lg_json_at(&j, 0, 0) == -1 && lg_json_at(&j, -1, 0) == -1);
	v = lg_json_raw(&j, s, 4);
	ASSERT(v.n == 1 && v.p == s + 9 && v.p[0] == 'x');
	v = lg_json_span(&j, s, 4);
	ASSERT(v.n == 3 && v.p == s + 8 && memcmp(v.p, "\"x\"", 3) == 0);
	v = lg_json_span(&j, s, 2);
	ASSERT(v.n == 7 && memcmp(v.p, "[1,\"x\"]", 7) == 0);
	v = lg_json_raw(&j, s, 0);
	ASSERT(v.n == 20 && v.p == s);
	ASSERT(lg_json_num(&j, s, 3, -1) == 1);
	ASSERT(lg_json_num(&j, s, 4, -1) == -1); /* a string is not a number */
	ASSERT(lg_json_num(&j, s, -1, 42) == 42);
	ASSERT(lg_json_type(&j, -1) == LG_J_NONE && lg_json_type(&j, 6) == LG_J_OBJ);

	/* lg_json_get skips whole subtrees: the nested "a" is not the member */
	{
		static const char d2[] = "{\"x\":{\"a\":1},\"y\":[{\"a\":3}],\"a\":2,\"a\":4}";
		r = ut_jparse(&j, d2, sizeof d2 - 1, ut_tok, UT_NTOK, &s);
		ut_case("%s", d2);
		if (LLMGW_JSON_DEPTH >= 3 && ASSERT(r == 14)) {
			int a = lg_json_get(&j, s, 0, "a");
			ASSERT(a == 11 && lg_json_num(&j, s, a, 0) == 2); /* the first of two */
			ASSERT(lg_json_at(&j, lg_json_get(&j, s, 0, "y"), 0) == 7);
			ASSERT(lg_json_get(&j, s, lg_json_get(&j, s, 0, "x"), "a") == 4);
		}
	}
	/* numbers through lg_json_num */
	{
		static const struct {
			const char *s;
			double v;
		} nums[] = {{"[0]", 0}, {"[-0.5]", -0.5}, {"[1E2]", 100}, {"[-1.5e3]", -1500}, {"[2.5e-1]", 0.25},
		            {"[123456789]", 123456789}, {"[1e308]", 1e308}};
		size_t i2;
		for (i2 = 0; i2 < LG_COUNTOF(nums); i2++) {
			r = ut_jparse(&j, nums[i2].s, strlen(nums[i2].s), ut_tok, UT_NTOK, &s);
			ut_case("%s", nums[i2].s);
			ASSERT(r == 2 && lg_json_num(&j, s, 1, -7) == nums[i2].v);
		}
		/* 63 characters still fit lg_json_num's buffer */
		{
			char big[80] = "[1.";
			memset(big + 3, '0', 59);
			big[62] = '1';
			big[63] = ']';
			big[64] = 0;
			r = ut_jparse(&j, big, 64, ut_tok, UT_NTOK, &s);
			ut_case("63-character number");
			ASSERT(r == 2 && lg_json_num(&j, s, 1, -7) == 1.0);
		}
	}
}

/* Malformed documents: the code, and the offset of the first bad byte. */
static const struct {
	const char *s;
	size_t n;
	int code;
	size_t off;
} ut_json_bad[] = {
    /* trailing commas, missing separators */
    {S("[1,]"), LG_JSON_ERR, 3}, {S("[1,2,]"), LG_JSON_ERR, 5}, {S("{\"a\":1,}"), LG_JSON_ERR, 7},
    {S("[,1]"), LG_JSON_ERR, 1}, {S("[,]"), LG_JSON_ERR, 1}, {S("{,}"), LG_JSON_ERR, 1},
    {S("[1 2]"), LG_JSON_ERR, 3}, {S("{\"a\":1 \"b\":2}"), LG_JSON_ERR, 7},
    {S("{\"a\" 1}"), LG_JSON_ERR, 5}, {S("{\"a\"}"), LG_JSON_ERR, 4}, {S("{\"a\":}"), LG_JSON_ERR, 5},
    {S("{:1}"), LG_JSON_ERR, 1}, {S("[\"a\":1]"), LG_JSON_ERR, 4}, {S("{\"a\"::1}"), LG_JSON_ERR, 5},
    /* unquoted keys, single quotes */
    {S("{a:1}"), LG_JSON_ERR, 1}, {S("{'a':1}"), LG_JSON_ERR, 1}, {S("'a'"), LG_JSON_ERR, 0},
    {S("{1:1}"), LG_JSON_ERR, 1}, {S("{null:1}"), LG_JSON_ERR, 1},
    /* numbers */
    {S("01"), LG_JSON_ERR, 1}, {S("00"), LG_JSON_ERR, 1}, {S("[01]"), LG_JSON_ERR, 2},
    {S("-01"), LG_JSON_ERR, 2}, {S(".5"), LG_JSON_ERR, 0}, {S("[.5]"), LG_JSON_ERR, 1},
    {S("1."), LG_JSON_PARTIAL, 2}, {S("[1.]"), LG_JSON_ERR, 3}, {S("1.e5"), LG_JSON_ERR, 2},
    {S("1e"), LG_JSON_PARTIAL, 2}, {S("[1e]"), LG_JSON_ERR, 3}, {S("1e+"), LG_JSON_PARTIAL, 3},
    {S("[1e+]"), LG_JSON_ERR, 4}, {S("1ex"), LG_JSON_ERR, 2}, {S("1.5.3"), LG_JSON_ERR, 3},
    {S("-"), LG_JSON_PARTIAL, 1}, {S("[-]"), LG_JSON_ERR, 2}, {S("-a"), LG_JSON_ERR, 1},
    {S("- 1"), LG_JSON_ERR, 1}, {S("+1"), LG_JSON_ERR, 0}, {S("0x10"), LG_JSON_ERR, 1},
    {S("-Infinity"), LG_JSON_ERR, 1}, {S("NaN"), LG_JSON_ERR, 0}, {S("1e5.0"), LG_JSON_ERR, 3},
    {S("[1.5e]"), LG_JSON_ERR, 5}, {S("[--1]"), LG_JSON_ERR, 2},
    /* literals */
    {S("tru"), LG_JSON_PARTIAL, 3}, {S("trux"), LG_JSON_ERR, 3}, {S("[tru]"), LG_JSON_ERR, 4},
    {S("True"), LG_JSON_ERR, 0}, {S("nul"), LG_JSON_PARTIAL, 3}, {S("nulL"), LG_JSON_ERR, 3},
    {S("fals"), LG_JSON_PARTIAL, 4}, {S("falsy"), LG_JSON_ERR, 4}, {S("truefalse"), LG_JSON_ERR, 4},
    {S("undefined"), LG_JSON_ERR, 0},
    /* empty input */
    {S(""), LG_JSON_PARTIAL, 0}, {S("   "), LG_JSON_PARTIAL, 3}, {S("\n"), LG_JSON_PARTIAL, 1},
    /* strings: control characters, escapes */
    {S("\"a\x01z\""), LG_JSON_ERR, 2}, {S("\"\t\""), LG_JSON_ERR, 1}, {S("\"\n\""), LG_JSON_ERR, 1},
    {S("\"\x1f\""), LG_JSON_ERR, 1}, {S("\"\x00\""), LG_JSON_ERR, 1}, {S("[\"\r\"]"), LG_JSON_ERR, 2},
    {S("\"\\x\""), LG_JSON_ERR, 2}, {S("\"\\a\""), LG_JSON_ERR, 2}, {S("\"\\U0041\""), LG_JSON_ERR, 2},
    {S("\"\\'\""), LG_JSON_ERR, 2}, {S("\"\\0\""), LG_JSON_ERR, 2}, {S("\"\\\x00\""), LG_JSON_ERR, 2},
    {S("\"\\u12\""), LG_JSON_ERR, 5}, {S("\"\\u00g0\""), LG_JSON_ERR, 5}, {S("\"\\u\""), LG_JSON_ERR, 3},
    {S("\"\\u-123\""), LG_JSON_ERR, 3}, {S("\"\\u 123\""), LG_JSON_ERR, 3},
    {S("\"abc"), LG_JSON_PARTIAL, 4}, {S("\"\\"), LG_JSON_PARTIAL, 2}, {S("\"\\u00"), LG_JSON_PARTIAL, 5},
    /* trailing garbage */
    {S("[1]x"), LG_JSON_ERR, 3}, {S("{} {}"), LG_JSON_ERR, 3}, {S("1 2"), LG_JSON_ERR, 2},
    {S("nullnull"), LG_JSON_ERR, 4}, {S("\"a\"\"b\""), LG_JSON_ERR, 3}, {S("[1]]"), LG_JSON_ERR, 3},
    {S("[1]\x00"), LG_JSON_ERR, 3}, {S("{},"), LG_JSON_ERR, 2},
    /* mismatched brackets, stray characters */
    {S("]"), LG_JSON_ERR, 0}, {S("}"), LG_JSON_ERR, 0}, {S("[}"), LG_JSON_ERR, 1}, {S("{]"), LG_JSON_ERR, 1},
    {S("[1}"), LG_JSON_ERR, 2}, {S("{\"a\":1]"), LG_JSON_ERR, 6}, {S(":"), LG_JSON_ERR, 0},
    {S(","), LG_JSON_ERR, 0}, {S("\x00"), LG_JSON_ERR, 0}, {S("\xef\xbb\xbf{}"), LG_JSON_ERR, 0},
    {S("\f1"), LG_JSON_ERR, 0}, {S("\v1"), LG_JSON_ERR, 0}, {S("\xc2\xa0" "1"), LG_JSON_ERR, 0},
    {S("[1,\x00]"), LG_JSON_ERR, 3}, {S("/* c */ 1"), LG_JSON_ERR, 0},
    /* incomplete containers */
    {S("["), LG_JSON_PARTIAL, 1}, {S("{"), LG_JSON_PARTIAL, 1}, {S("[1"), LG_JSON_PARTIAL, 2},
    {S("{\"a\":1"), LG_JSON_PARTIAL, 6}, {S("{\"a\""), LG_JSON_PARTIAL, 4}, {S("[1,"), LG_JSON_PARTIAL, 3},
};

static void t_json_invalid(void)
{
	size_t i, k;
	for (i = 0; i < LG_COUNTOF(ut_json_bad); i++) {
		const char *s = ut_json_bad[i].s;
		size_t n = ut_json_bad[i].n, off = ut_json_bad[i].off;
		int code = ut_json_bad[i].code, r;
		struct lg_json j;
		r = ut_jparse(&j, s, n, ut_tok, UT_NTOK, NULL);
		ut_case("json %s: got %d at %zu (%s), want %d at %zu", ut_esc(s, n), r, j.err_off,
		        j.err ? j.err : "-", code, off);
		ASSERT(!ut_ref_json(s, n, NULL)); /* the oracle agrees it is not a document */
		ASSERT(r == code && j.err != NULL);
		if (code == LG_JSON_ERR) ASSERT(j.err_off == off);
		r = ut_jparse(&j, s, n, NULL, 0, NULL);
		ASSERT(r == code && (code != LG_JSON_ERR || j.err_off == off));
		/* an error does not depend on what follows it, nor on where the
		 * input is cut after it; before it, the input only "needs more" */
		for (k = 0; k < n; k++) {
			unsigned rn;
			int exp = k > off && code == LG_JSON_ERR ? LG_JSON_ERR
			          : ut_ref_json(s, k, &rn)       ? (int)rn
			                                          : LG_JSON_PARTIAL;
			r = ut_jparse(&j, s, k, ut_tok, UT_NTOK, NULL);
			ut_case("json %s cut to %zu: got %d at %zu, want %d", ut_esc(s, n), k, r, j.err_off, exp);
			ASSERT(r == exp && (exp != LG_JSON_ERR || j.err_off == off));
		}
	}
}

/* ===== jsonw: unescape and the writer ================================== */

static void t_jsonw_unescape(void)
{
	static const struct {
		const char *in;
		size_t n;
		const char *out;
		long outn; /* -1: malformed */
	} cases[] = {
	    {S(""), "", 0},
	    {S("abc"), "abc", 3},
	    {S("\\\"\\\\\\/\\b\\f\\n\\r\\t"), "\"\\/\b\f\n\r\t", 8},
	    {S("a\\nb"), "a\nb", 3},
	    {S("\\u0041"), "A", 1},
	    {S("\\u00e9"), "\xc3\xa9", 2},
	    {S("\\u00E9"), "\xc3\xa9", 2},
	    {S("\\u20ac"), "\xe2\x82\xac", 3},
	    {S("\\u20AC!"), "\xe2\x82\xac!", 4},
	    {S("\\ud83d\\ude00"), "\xf0\x9f\x98\x80", 4},
	    {S("\\uD83D\\uDE00"), "\xf0\x9f\x98\x80", 4},
	    {S("\\ud800\\udc00"), "\xf0\x90\x80\x80", 4},
	    {S("\\udbff\\udfff"), "\xf4\x8f\xbf\xbf", 4},
	    {S("\\ud83d"), "\xef\xbf\xbd", 3},                      /* lone high at the end */
	    {S("\\ud83dx"), "\xef\xbf\xbdx", 4},                    /* lone high, then text */
	    {S("\\ud83d\\u0041"), "\xef\xbf\xbd" "A", 4},           /* high, then not a low */
	    {S("\\ud83d\\ud83d\\ude00"), "\xef\xbf\xbd\xf0\x9f\x98\x80", 7},
	    {S("\\ud83d\\n"), "\xef\xbf\xbd\n", 4},
	    {S("\\ude00"), "\xef\xbf\xbd", 3},                      /* lone low */
	    {S("\\ude00\\ud83d"), "\xef\xbf\xbd\xef\xbf\xbd", 6},
	    {S("\\u0000"), "\0", 1},
	    {S("\\u007f\\u0080\\u07ff\\u0800\\uffff"), "\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf", 11},
	    {S("\xc3\xa9"), "\xc3\xa9", 2}, /* raw UTF-8 passes through */
	    /* malformed */
	    {S("\\"), NULL, -1},
	    {S("abc\\"), NULL, -1},
	    {S("\\x"), NULL, -1},
	    {S("\\'"), NULL, -1},
	    {S("\\u"), NULL, -1},
	    {S("\\u12"), NULL, -1},
	    {S("\\u123"), NULL, -1},
	    {S("\\u12g4"), NULL, -1},
	    {S("\\U0041"), NULL, -1},
	    {S("\\ud83d\\u12"), NULL, -1},
	    {S("\\ud83d\\"), NULL, -1},
	};
	size_t i;
	for (i = 0; i < LG_COUNTOF(cases); i++) {
		const char *in = ut_guard(cases[i].in, cases[i].n);
		/* the output needs at most n bytes: put it against the other guard */
		char *out = ut_guard_at(1, "", 0) - cases[i].n;
		long r = lg_json_unescape(in, cases[i].n, out);
		ut_case("unescape %s: got %ld %s", ut_esc(cases[i].in, cases[i].n), r,
		        r >= 0 ? ut_esc(out, (size_t)r) : "");
		ASSERT(r == cases[i].outn);
		if (r >= 0 && cases[i].outn >= 0)
			ASSERT(r <= (long)cases[i].n && memcmp(out, cases[i].out, (size_t)r) == 0);
	}
}

static void t_jsonw_write(void)
{
	static const struct {
		const char *in;
		size_t n;
		const char *out;
	} strs[] = {
	    {S(""), "\"\""},
	    {S("plain"), "\"plain\""},
	    {S("a\"b"), "\"a\\\"b\""},
	    {S("back\\slash"), "\"back\\\\slash\""},
	    {S("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\""},
	    {S("\x01\x1f"), "\"\\u0001\\u001f\""},
	    {S("\x00"), "\"\\u0000\""},
	    {S("\x7f/\xc3\xa9 \xe2\x82\xac"), "\"\x7f/\xc3\xa9 \xe2\x82\xac\""},
	    {S("</script>"), "\"</script>\""},
	    {S("x\x1by"), "\"x\\u001by\""},
	};
	static const struct {
		double v;
		const char *out;
	} nums[] = {
	    {0, "0"}, {42, "42"}, {-7, "-7"}, {1.5, "1.5"}, {0.1, "0.1"}, {-2.25, "-2.25"},
	    {123456789012.0, "123456789012"}, {1e15, "1e+15"}, {0.000001234, "1.234e-06"},
	    {1e300, "1e+300"}, {0.30000000000000004, "0.3"}, {2.5e-05, "2.5e-05"},
	};
	struct lg_buf b;
	size_t i;
	for (i = 0; i < LG_COUNTOF(strs); i++) {
		lg_buf_init(&b, 0);
		ut_case("wstr %s", ut_esc(strs[i].in, strs[i].n));
		ASSERT(lg_json_wstr(&b, strs[i].in, strs[i].n) == 0);
		ASSERT(b.len == strlen(strs[i].out) && memcmp(b.p, strs[i].out, b.len) == 0);
		lg_buf_free(&b);
	}
	for (i = 0; i < LG_COUNTOF(nums); i++) {
		struct lg_json j;
		const char *s;
		lg_buf_init(&b, 0);
		ut_case("wnum %.17g", nums[i].v);
		ASSERT(lg_json_wnum(&b, nums[i].v) == 0);
		ASSERT(b.len == strlen(nums[i].out) && memcmp(b.p, nums[i].out, b.len) == 0);
		/* it is a JSON number */
		ASSERT(ut_jparse(&j, b.p, b.len, ut_tok, UT_NTOK, &s) == 1 && ut_tok[0].type == LG_J_NUM);
		lg_buf_free(&b);
	}
	/* not finite: still valid JSON */
	{
		double bad[3];
		bad[0] = NAN, bad[1] = INFINITY, bad[2] = -INFINITY;
		for (i = 0; i < 3; i++) {
			struct lg_json j;
			lg_buf_init(&b, 0);
			ut_case("wnum non-finite %zu", i);
			ASSERT(lg_json_wnum(&b, bad[i]) == 0);
			ASSERT(ut_jparse(&j, b.p, b.len, ut_tok, UT_NTOK, NULL) == 1);
			lg_buf_free(&b);
		}
	}
	/* round trip of numbers: wnum then strtod gives the value back (12 digits) */
	{
		uint64_t st = 0x9e3779b97f4a7c15ULL;
		for (i = 0; i < 2000; i++) {
			double v = (double)(int64_t)(lg_rand(&st) >> 11) / (double)(1ULL << (lg_rand(&st) % 60));
			char tmp[64];
			if (i & 1) v = -v;
			lg_buf_init(&b, 0);
			lg_json_wnum(&b, v);
			ut_case("wnum %.17g -> %s", v, ut_esc(b.p, b.len));
			if (ASSERT(b.len > 0 && b.len < sizeof tmp)) {
				struct lg_json j;
				memcpy(tmp, b.p, b.len);
				tmp[b.len] = 0;
				ASSERT(fabs(strtod(tmp, NULL) - v) <= fabs(v) * 1e-11);
				ASSERT(ut_jparse(&j, b.p, b.len, ut_tok, UT_NTOK, NULL) == 1);
			}
			lg_buf_free(&b);
		}
	}
	/* the buffer maximum: a string that does not fit is an error, not a
	 * truncated string */
	lg_buf_init(&b, 5);
	ut_case("wstr past max");
	ASSERT(lg_json_wstr(&b, "abcdef", 6) == -1 && b.err);
	lg_buf_free(&b);
	lg_buf_init(&b, 12);
	ASSERT(lg_json_wstr(&b, "\x01\x02\x03", 3) == -1 && b.err); /* 20 bytes once escaped */
	lg_buf_free(&b);
	lg_buf_init(&b, 8);
	ASSERT(lg_json_wstr(&b, "abcdef", 6) == 0 && b.len == 8 && !b.err); /* exactly fits */
	lg_buf_free(&b);
}

/* lg_json_wz takes NULL as "" (it tests z before strlen), but then
 * lg_json_wstr computes s + run with s == NULL: undefined behaviour, which
 * clang's -fsanitize=undefined reports (and aborts on). */
static void t_jsonw_wz_null(void)
{
	struct lg_buf b;
	lg_buf_init(&b, 0);
	ut_case("wz(NULL)");
	ASSERT(lg_json_wz(&b, NULL) == 0 && b.len == 2 && memcmp(b.p, "\"\"", 2) == 0);
	lg_buf_free(&b);
}

/* Random strings: write, tokenize, unescape gives the bytes back. */
static size_t ut_rand_str(uint64_t *st, char *o, int mode)
{
	size_t n = 0, len = lg_rand(st) % 48;
	static const char special[] = "\"\\/\b\f\n\r\t\x01\x1f\x7f aZ{}[]:,";
	while (n < len) {
		uint64_t r = lg_rand(st);
		if (mode == 0) {
			o[n++] = (char)(r & 0xff);
		} else if (mode == 1) {
			o[n++] = special[r % (sizeof special - 1)];
		} else {
			uint32_t cp;
			char *p = o + n;
			switch (r % 4) {
			case 0: cp = (uint32_t)(r >> 8) % 0x80; break;
			case 1: cp = 0x80 + (uint32_t)(r >> 8) % (0x800 - 0x80); break;
			case 2:
				cp = 0x800 + (uint32_t)(r >> 8) % (0x10000 - 0x800);
				if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
				break;
			default: cp = 0x10000 + (uint32_t)(r >> 8) % (0x110000 - 0x10000); break;
			}
			lg_utf8_put(&p, cp);
			n = (size_t)(p - o);
		}
	}
	return n;
}

/* lg_fmt_g is "%.<p>g" without printf: it must print exactly what snprintf
 * prints, for costs (tiny to large, with ties and 9.999.. carries) and for
 * random doubles across the whole range. */
static void t_jsonw_fmt_g(void)
{
	static const double fixed[] = {
	    1.875e-05, 0.5, 0.05, 0.25, 1.0, 10.0, 9.9999999999995, 9.99999999999949, 0.000099999999999995,
	    99999999999.95, 999999999999.5, 1e-11, 1e-12, 9.99999999999e-12, 123456.789e3, 0.1, 0.2, 0.3,
	    0.30000000000000004, 1e14, 9.99999999999999e14, 1e15, 2.5e-05, 6e-07, 0.0001, 0.00001, 1.5e-5,
	    0.000123456789012345, 3.0000000000005, 0.12345678901250, 42.4242424242425, -7.5e-05, -0.5,
	};
	uint64_t st = 0x243f6a8885a308d3ULL;
	char got[32], want[32];
	size_t i;
	int p, mism = 0, reported = 0;
	for (p = 1; p <= 15; p++)
		for (i = 0; i < LG_COUNTOF(fixed); i++) {
			size_t n = lg_fmt_g(got, fixed[i], p);
			snprintf(want, sizeof want, "%.*g", p, fixed[i]);
			ut_case("fmt_g %.17g p=%d: %s vs %s", fixed[i], p, got, want);
			ASSERT(n == strlen(got) && strcmp(got, want) == 0);
		}
	for (i = 0; i < 400000; i++) {
		uint64_t r = lg_rand(&st);
		double v;
		switch (i % 4) {
		case 0: /* a cost: tokens times a price per million */
			v = (double)(r % 200000) * ((double)(lg_rand(&st) % 100000) / 1000.0) / 1e6;
			break;
		case 1: /* any double of a wide range of magnitudes */
			int ex = (int)(lg_rand(&st) % 45) - 22;
			v = (double)(r >> 11) / (double)(1ULL << 53);
			v = ex >= 0 ? v * lg_p10[ex] : v / lg_p10[-ex];
			break;
		case 2: /* short decimals: ties in the last digit are common */
			v = (double)(r % 100000000) / lg_p10[lg_rand(&st) % 16];
			break;
		default: { /* raw bit patterns, finite ones */
			memcpy(&v, &r, sizeof v);
			if (!isfinite(v)) v = 1.0;
		}
		}
		if (r & 1) v = -v;
		p = i % 3 == 0 ? 12 : 1 + (int)(lg_rand(&st) % 15);
		lg_fmt_g(got, v, p);
		snprintf(want, sizeof want, "%.*g", p, v);
		if (strcmp(got, want) != 0) {
			mism++;
			if (reported++ < 5) {
				ut_case("fmt_g %.17g p=%d: %s vs %s", v, p, got, want);
				ASSERT(0);
			}
		}
	}
	ut_case("fmt_g: %d of 400000 random values differ from snprintf", mism);
	ASSERT(mism == 0);
	/* integers as token counts: the fast path of lg_json_num is exact */
	{
		static const char *const ints[] = {"0", "7", "123456789012345", "1234567890123456", "-12", "12.5",
		                                   "1e3", "999999999999999"};
		for (i = 0; i < LG_COUNTOF(ints); i++) {
			struct lg_json j;
			const char *s;
			ut_case("json_num %s", ints[i]);
			if (ASSERT(ut_jparse(&j, ints[i], strlen(ints[i]), ut_tok, UT_NTOK, &s) == 1))
				ASSERT(lg_json_num(&j, s, 0, -1) == strtod(ints[i], NULL));
		}
	}
}

static void t_jsonw_roundtrip(void)
{
	uint64_t st = 12345;
	int i;
	for (i = 0; i < 6000; i++) {
		char in[256];
		size_t n = ut_rand_str(&st, in, i % 3);
		struct lg_buf b;
		struct lg_json j;
		const char *s;
		int r;
		lg_buf_init(&b, 0);
		ut_case("round trip #%d %s", i, ut_esc(in, n));
		if (!ASSERT(lg_json_wstr(&b, in, n) == 0)) continue;
		r = ut_jparse(&j, b.p, b.len, ut_tok, UT_NTOK, &s);
		if (ASSERT(r == 1 && ut_tok[0].type == LG_J_STR && ut_tok[0].start == 1 && ut_tok[0].end == b.len - 1)) {
			size_t en = ut_tok[0].end - ut_tok[0].start;
			char *out = ut_guard_at(1, "", 0) - en;
			long u = lg_json_unescape(s + 1, en, out);
			struct lg_buf want; /* the input, with each ill-formed UTF-8 subpart as U+FFFD */
			lg_str w = lg_utf8_fix(&want, lg_str_of(in, n));
			ASSERT(u == (long)w.n && memcmp(out, w.p, w.n) == 0);
			ASSERT(lg_utf8_valid(out, (size_t)(u > 0 ? u : 0)));
			lg_buf_free(&want);
		}
		lg_buf_free(&b);
	}
	/* random escaped strings the tokenizer accepts always unescape, into
	 * no more bytes than they had */
	for (i = 0; i < 3000; i++) {
		char in[400];
		size_t n = 0, k, len = lg_rand(&st) % 24;
		static const char hex[] = "0123456789abcdefABCDEF";
		static const char *const pick[] = {"\\ud83d", "\\ude00", "\\uD800", "\\uDFFF", "\\udbff\\udfff"};
		struct lg_json j;
		in[n++] = '"';
		for (k = 0; k < len; k++) {
			uint64_t r = lg_rand(&st);
			switch (r % 5) {
			case 0: {
				char c = (char)(0x20 + r % 0x5f);
				in[n++] = c == '"' || c == '\\' ? 'q' : c;
				break;
			}
			case 1: in[n++] = '\\', in[n++] = "\"\\/bfnrt"[(r >> 8) % 8]; break;
			case 2:
				in[n++] = '\\', in[n++] = 'u';
				in[n++] = hex[(r >> 8) % 22], in[n++] = hex[(r >> 16) % 22];
				in[n++] = hex[(r >> 24) % 22], in[n++] = hex[(r >> 32) % 22];
				break;
			case 3: {
				const char *z = pick[(r >> 8) % LG_COUNTOF(pick)];
				memcpy(in + n, z, strlen(z));
				n += strlen(z);
				break;
			}
			default: in[n++] = (char)(0x80 | (r >> 8) % 0x80); break;
			}
		}
		in[n++] = '"';
		ut_case("escaped #%d %s", i, ut_esc(in, n));
		if (ASSERT(ut_jparse(&j, in, n, ut_tok, UT_NTOK, NULL) == 1 && ut_tok[0].type == LG_J_STR)) {
			char *out = ut_guard_at(1, "", 0) - (n - 2);
			const char *g = ut_guard(in + 1, n - 2);
			long u = lg_json_unescape(g, n - 2, out);
			ASSERT(u >= 0 && u <= (long)(n - 2));
		}
	}
}

/* ===== ini: the INI reader and lg_cfg_parse ============================= */

static char ut_secret_path[64]; /* "  sk-file-secret  \r\nsecond line\n" */
static char ut_empty_path[64];  /* an empty file */

static void ut_cfg_env(void)
{
	static int done;
	int fd;
	if (done) return;
	done = 1;
	setenv("LLMGW_UT_ADMIN", "admin-from-env", 1);
	setenv("LLMGW_UT_KEY", "key-from-env", 1);
	setenv("LLMGW_UT_EMPTY", "", 1);
	unsetenv("LLMGW_UT_UNSET");
	/* the proxy settings of whoever runs the tests must not leak in */
	unsetenv("HTTPS_PROXY"), unsetenv("https_proxy"), unsetenv("NO_PROXY"), unsetenv("no_proxy");
	strcpy(ut_secret_path, "/tmp/llmgw-ut-secret-XXXXXX");
	strcpy(ut_empty_path, "/tmp/llmgw-ut-empty-XXXXXX");
	if ((fd = mkstemp(ut_secret_path)) < 0 || write(fd, "  sk-file-secret  \r\nsecond line\n", 32) != 32 ||
	    close(fd) != 0 || (fd = mkstemp(ut_empty_path)) < 0 || close(fd) != 0) {
		perror("mkstemp");
		exit(2);
	}
}

static void ut_cfg_cleanup(void)
{
	if (ut_secret_path[0]) unlink(ut_secret_path);
	if (ut_empty_path[0]) unlink(ut_empty_path);
}

/* Replaces @SECRET@ and @EMPTY@ with the temp files; joins lines with eol.
 * Returns a malloc'd string. */
static char *ut_cfg_text(const char *const *lines, size_t nl, const char *eol, size_t *len)
{
	struct lg_buf b;
	size_t i;
	lg_buf_init(&b, 0);
	for (i = 0; i < nl; i++) {
		const char *l = lines[i], *at;
		while ((at = strchr(l, '@')) != NULL) {
			lg_buf_add(&b, l, (size_t)(at - l));
			if (strncmp(at, "@SECRET@", 8) == 0)
				lg_buf_addz(&b, ut_secret_path), l = at + 8;
			else if (strncmp(at, "@EMPTY@", 7) == 0)
				lg_buf_addz(&b, ut_empty_path), l = at + 7;
			else
				lg_buf_addc(&b, '@'), l = at + 1;
		}
		lg_buf_addz(&b, l);
		lg_buf_addz(&b, eol);
	}
	lg_buf_addc(&b, 0);
	*len = b.len - 1;
	return b.p;
}

/* Parses text placed against the guard page. */
static struct lg_cfg *ut_cfg(const char *text, size_t n, char *err, size_t errlen)
{
	err[0] = 0;
	return lg_cfg_parse(ut_guard(text, n), n, "ut.ini", err, errlen);
}

static const char *const ut_cfg_full[] = {
    "; llmgw unit test configuration",                     /* 1 */
    "# a hash comment at the start of a line",             /* 2 */
    "   ; an indented comment",                            /* 3 */
    "[gateway]",                                           /* 4 */
    "listen = 127.0.0.1:18080   ; a comment after blanks", /* 5 */
    "listen = [::1]:18081\t# a hash comment after a tab",  /* 6 */
    "workers = 2",                                         /* 7 */
    "max_connections = 512",                               /* 8 */
    "max_body = 16m",                                      /* 9 */
    "max_header = 32k",                                    /* 10 */
    "header_timeout = 500ms",                              /* 11 */
    "idle_timeout = 10s",                                  /* 12 */
    "connect_timeout = 2m",                                /* 13 */
    "first_byte_timeout = 1h",                             /* 14 */
    "stream_idle_timeout = 1.5s",                          /* 15 */
    "shutdown_timeout = 7",                                /* 16 */
    "max_attempts = 5",                                    /* 17 */
    "ca_file = /etc/ssl/certs/ca-certificates.crt",        /* 18 */
    "proxy = http://127.0.0.1:3128",                       /* 19 */
    "admin_key = env:LLMGW_UT_ADMIN",                      /* 20 */
    "metrics = public",                                    /* 21 */
    "auth = none",                                         /* 22 */
    "zdr = yes",                                           /* 23 */
    "access_log = /var/log/llmgw#1.jsonl",                 /* 24: '#' without a blank before it */
    "log_level = debug",                                   /* 25 */
    "state_dir = /var/lib/llmgw",                          /* 26 */
    "",                                                    /* 27 */
    "[provider.openai]",                                   /* 28 */
    "type = openai",                                       /* 29 */
    "base_url = http://api.example.com:8443/v1/",          /* 30 */
    "api_key = file:@SECRET@",                             /* 31 */
    "header = OpenAI-Organization: org-123",               /* 32 */
    "header = X-Tag: a#b;c",                               /* 33 */
    "zdr = true",                                          /* 34 */
    "collects_data = off",                                 /* 35 */
    "direct = 1",                                          /* 36 */
    "region = eu",                                         /* 37 */
    "max_concurrency = 4",                                 /* 38 */
    "",                                                    /* 39 */
    "[provider.echo]",                                     /* 40 */
    "type = mock",                                         /* 41 */
    "api_key = literal-secret",                            /* 42 */
    "",                                                    /* 43 */
    "[model.gpt-4o]",                                      /* 44 */
    ("target = openai gpt-4o-2024 in=2.5 out=10 cache_read=1.25 cache_write=3 weight=2 context=128000 "
     "max_output=16384 quant=fp8"), /* 45 */
    "target = echo  mock-1\tin=0.15",                      /* 46 */
    "strategy = order",                                    /* 47 */
    "fallbacks = mini, openai/gpt-4.1",                    /* 48 */
    "aliases = gpt4 , openai-gpt4o,",                      /* 49 */
    "affinity = 10m",                                      /* 50 */
    "",                                                    /* 51 */
    "[model.mini]",                                        /* 52 */
    "target = echo mock-mini",                             /* 53 */
    "",                                                    /* 54 */
    "[key.marketing]",                                     /* 55 */
    "secret = sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0", /* 56: "s3cret" */
    "models = gpt-4o*, claude-*",                          /* 57 */
    "budget = 50/month",                                   /* 58 */
    "rpm = 60",                                            /* 59 */
    "tpm = 200000",                                        /* 60 */
    "max_concurrency = 8",                                 /* 61 */
    "zdr = on",                                            /* 62 */
    "data_collection = deny",                              /* 63 */
    "regions = eu, us",                                    /* 64 */
    "",                                                    /* 65 */
    "[key.env]",                                           /* 66 */
    "secret = env:LLMGW_UT_KEY",                           /* 67 */
    "",                                                    /* 68 */
    "[key.file]",                                          /* 69 */
    "secret = file:@SECRET@",                              /* 70 */
    "budget = 2.5/day",                                    /* 71 */
    "",                                                    /* 72 */
    "[ key.plain ]",                                       /* 73 */
    "secret=plain-secret ; comment",                       /* 74 */
};

static int ut_zeq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

static int ut_hash_of(const unsigned char h[32], const char *secret)
{
	unsigned char d[32];
	lg_sha256(secret, strlen(secret), d);
	return memcmp(h, d, 32) == 0;
}

static void ut_cfg_check_full(const struct lg_cfg *c)
{
	const struct lg_provider *o, *e;
	const struct lg_model *m;
	const struct lg_target *t;
	const struct lg_key *k;
	/* [gateway] */
	ASSERT(ut_zeq(c->path, "ut.ini"));
	if (ASSERT(c->nlisten == 2))
		ASSERT(ut_zeq(c->listen[0], "127.0.0.1:18080") && ut_zeq(c->listen[1], "[::1]:18081"));
	ASSERT(c->workers == 2 && c->max_connections == 512 && c->max_attempts == 5);
	ASSERT(c->max_body == 16u * 1048576 && c->max_header == 32768);
	ASSERT(c->header_timeout == 500 && c->idle_timeout == 10000 && c->connect_timeout == 120000);
	ASSERT(c->first_byte_timeout == 3600000 && c->stream_idle_timeout == 1500 && c->shutdown_timeout == 7000);
	ASSERT(ut_zeq(c->ca_file, "/etc/ssl/certs/ca-certificates.crt"));
	ASSERT(ut_zeq(c->proxy, "http://127.0.0.1:3128"));
	ASSERT(ut_zeq(c->admin_key, "admin-from-env"));
	ASSERT(c->metrics == LG_METRICS_PUBLIC && c->auth_none == 1 && c->zdr == 1);
	ASSERT(ut_zeq(c->access_log, "/var/log/llmgw#1.jsonl"));
	ASSERT(c->log_level == LG_LOG_DEBUG);
	ASSERT(ut_zeq(c->state_dir, "/var/lib/llmgw"));
	/* [provider.*] */
	if (!ASSERT(c->nprov == 2)) return;
	o = c->prov[0], e = c->prov[1];
	ASSERT(ut_zeq(o->name, "openai") && o->line == 28 && ut_zeq(o->row->name, "openai"));
	ASSERT(ut_zeq(o->base_url, "http://api.example.com:8443/v1/") && ut_zeq(o->host, "api.example.com"));
	ASSERT(o->port == 8443 && o->tls == 0 && ut_zeq(o->base_path, "/v1"));
	ASSERT(ut_zeq(o->origin, "api.example.com:8443"));
	ASSERT(ut_zeq(o->api_key, "sk-file-secret")); /* first line, trimmed */
	if (ASSERT(o->nheaders == 2))
		ASSERT(ut_zeq(o->headers[0], "OpenAI-Organization: org-123") && ut_zeq(o->headers[1], "X-Tag: a#b;c"));
	ASSERT(o->zdr == 1 && o->collects_data == 0 && o->direct == 1 && o->max_concurrency == 4);
	ASSERT(ut_zeq(o->region, "eu"));
	ASSERT(ut_zeq(e->name, "echo") && e->line == 40 && ut_zeq(e->row->name, "mock") && e->host == NULL);
	ASSERT(ut_zeq(e->api_key, "literal-secret") && e->collects_data == 1 && e->zdr == 0 && e->direct == 0);
	ASSERT(lg_cfg_find_provider(c, "echo", 4) == e && lg_cfg_find_provider(c, "ech", 3) == NULL);
	/* [model.*] */
	if (!ASSERT(c->nmodels == 2)) return;
	m = c->models[0];
	ASSERT(ut_zeq(m->name, "gpt-4o") && m->line == 44 && m->strategy == LG_STRAT_ORDER);
	ASSERT(m->affinity_ms == 600000);
	if (ASSERT(m->nfallbacks == 2)) ASSERT(ut_zeq(m->fallbacks[0], "mini") && ut_zeq(m->fallbacks[1], "openai/gpt-4.1"));
	if (ASSERT(m->naliases == 2)) ASSERT(ut_zeq(m->aliases[0], "gpt4") && ut_zeq(m->aliases[1], "openai-gpt4o"));
	ASSERT(lg_cfg_find_model(c, lg_strz("gpt4")) == m && lg_cfg_find_model(c, lg_strz("openai-gpt4o")) == m);
	ASSERT(lg_cfg_find_model(c, lg_strz("mini")) == c->models[1] && lg_cfg_find_model(c, lg_strz("gpt")) == NULL);
	if (ASSERT(m->nt == 2)) {
		t = &m->t[0];
		ASSERT(t->prov == o && ut_zeq(t->prov_name, "openai") && ut_zeq(t->upstream, "gpt-4o-2024") && t->line == 45);
		ASSERT(t->in == 2.5 && t->out == 10 && t->cache_read == 1.25 && t->cache_write == 3 && t->weight == 2);
		ASSERT(t->context == 128000 && t->max_output == 16384 && ut_zeq(t->quant, "fp8"));
		t = &m->t[1];
		ASSERT(t->prov == e && ut_zeq(t->upstream, "mock-1") && t->line == 46);
		/* cache prices default to the input price */
		ASSERT(t->in == 0.15 && t->out == 0 && t->cache_read == 0.15 && t->cache_write == 0.15);
		ASSERT(t->weight == 1 && t->context == 0 && t->max_output == 0 && t->quant == NULL);
	}
	m = c->models[1];
	ASSERT(ut_zeq(m->name, "mini") && m->line == 52 && m->nt == 1 && m->naliases == 0 && m->nfallbacks == 0);
	/* [key.*] */
	if (!ASSERT(c->nkeys == 4)) return;
	k = c->keys[0];
	ASSERT(ut_zeq(k->name, "marketing") && k->line == 55 && ut_hash_of(k->hash, "s3cret"));
	if (ASSERT(k->nmodels == 2)) ASSERT(ut_zeq(k->models[0], "gpt-4o*") && ut_zeq(k->models[1], "claude-*"));
	if (ASSERT(k->nregions == 2)) ASSERT(ut_zeq(k->regions[0], "eu") && ut_zeq(k->regions[1], "us"));
	ASSERT(k->budget == 50 && k->period == LG_PERIOD_MONTH && k->rpm == 60 && k->tpm == 200000);
	ASSERT(k->max_concurrency == 8 && k->zdr == 1 && k->data_deny == 1);
	k = c->keys[1];
	ASSERT(ut_zeq(k->name, "env") && ut_hash_of(k->hash, "key-from-env") && k->budget == 0 && k->data_deny == 0);
	k = c->keys[2];
	ASSERT(ut_zeq(k->name, "file") && ut_hash_of(k->hash, "sk-file-secret"));
	ASSERT(k->budget == 2.5 && k->period == LG_PERIOD_DAY);
	k = c->keys[3];
	ASSERT(ut_zeq(k->name, "plain") && k->line == 73 && ut_hash_of(k->hash, "plain-secret"));
}

static void t_ini_full(void)
{
	static const char *const eols[] = {"\n", "\r\n"};
	size_t i;
	ut_cfg_env();
	for (i = 0; i < 2; i++) {
		size_t n;
		char err[512], *text = ut_cfg_text(ut_cfg_full, LG_COUNTOF(ut_cfg_full), eols[i], &n);
		struct lg_cfg *c = ut_cfg(text, n, err, sizeof err);
		ut_case("full config, lines end in %s: %s", i ? "CRLF" : "LF", err);
		if (ASSERT(c != NULL)) ut_cfg_check_full(c);
		lg_cfg_free(c);
		/* and without the newline at the end of the last line */
		c = ut_cfg(text, n - strlen(eols[i]), err, sizeof err);
		ut_case("full config without a final newline: %s", err);
		if (ASSERT(c != NULL)) ut_cfg_check_full(c);
		lg_cfg_free(c);
		free(text);
	}
}

/* An empty file is a valid config with the documented defaults. */
static void t_ini_defaults(void)
{
	char err[256];
	struct lg_cfg *c = ut_cfg("", 0, err, sizeof err);
	ut_case("empty config: %s", err);
	if (!ASSERT(c != NULL)) return;
	ASSERT(c->nlisten == 1 && ut_zeq(c->listen[0], "127.0.0.1:8080"));
	ASSERT(c->workers == 1 && c->max_connections == 1024 && c->max_attempts == 3);
	ASSERT(c->max_body == 16u << 20 && c->max_header == 32u << 10);
	ASSERT(c->header_timeout == 10000 && c->idle_timeout == 60000 && c->connect_timeout == 5000);
	ASSERT(c->first_byte_timeout == 120000 && c->stream_idle_timeout == 120000);
	ASSERT(c->metrics == LG_METRICS_ADMIN && c->auth_none == 0 && c->zdr == 0 && c->log_level == LG_LOG_INFO);
	ASSERT(c->nprov == 0 && c->nmodels == 0 && c->nkeys == 0 && c->admin_key == NULL);
	lg_cfg_free(c);
	/* only comments and blank lines */
	c = ut_cfg(S("; a\n# b\n\n   \n\t; c\r\n"), err, sizeof err);
	ASSERT(c != NULL);
	lg_cfg_free(c);
}

/* Values: sizes, booleans, lists, targets, in small configs. */
static void t_ini_values(void)
{
	static const struct {
		const char *v;
		size_t bytes;
	} sizes[] = {{"512", 512}, {"32k", 32768}, {"32K", 32768}, {"32kb", 32768}, {"16m", 16777216},
	             {"16 MB", 16777216}, {"1g", 1073741824}, {"1.5k", 1536}, {"512b", 512}, {"0", 0}};
	static const char *const yes[] = {"yes", "YES", "true", "True", "on", "1"};
	static const char *const no[] = {"no", "No", "false", "FALSE", "off", "0"};
	char text[512], err[256];
	struct lg_cfg *c;
	size_t i;
	ut_cfg_env();
	for (i = 0; i < LG_COUNTOF(sizes); i++) {
		snprintf(text, sizeof text, "[gateway]\nmax_body = %s\n", sizes[i].v);
		c = ut_cfg(text, strlen(text), err, sizeof err);
		ut_case("max_body = %s: %s", sizes[i].v, err);
		ASSERT(c != NULL && c->max_body == sizes[i].bytes);
		lg_cfg_free(c);
	}
	for (i = 0; i < LG_COUNTOF(yes); i++) {
		snprintf(text, sizeof text, "[gateway]\nzdr = %s\n", yes[i]);
		c = ut_cfg(text, strlen(text), err, sizeof err);
		ut_case("zdr = %s: %s", yes[i], err);
		ASSERT(c != NULL && c->zdr == 1);
		lg_cfg_free(c);
		snprintf(text, sizeof text, "[gateway]\nzdr = %s\n", no[i]);
		c = ut_cfg(text, strlen(text), err, sizeof err);
		ut_case("zdr = %s: %s", no[i], err);
		ASSERT(c != NULL && c->zdr == 0);
		lg_cfg_free(c);
	}
	/* the strategies, a literal api_key with '=' and spaces, an env secret */
	{
		static const char *const strat[] = {"order", "price", "latency", "throughput", "weighted"};
		for (i = 0; i < LG_COUNTOF(strat); i++) {
			snprintf(text, sizeof text,
			         "[provider.p]\ntype = mock\napi_key = a=b c\n[model.m]\ntarget = p x\nstrategy = %s\n", strat[i]);
			c = ut_cfg(text, strlen(text), err, sizeof err);
			ut_case("strategy = %s: %s", strat[i], err);
			if (ASSERT(c != NULL)) {
				ASSERT(c->models[0]->strategy == (int)i && ut_zeq(c->prov[0]->api_key, "a=b c"));
			}
			lg_cfg_free(c);
		}
	}
	/* an https base_url needs a TLS build */
	c = ut_cfg(S("[provider.p]\ntype = openai\nbase_url = https://api.openai.com/v1\n"), err, sizeof err);
	ut_case("https base_url, LLMGW_TLS=%d: %s", LLMGW_TLS, err);
#if LLMGW_TLS
	ASSERT(c != NULL && c->prov[0]->tls == 1 && c->prov[0]->port == 443 && ut_zeq(c->prov[0]->origin, "api.openai.com:443+tls"));
#else
	/* the provider's line, or the base_url line */
	ASSERT(c == NULL && (strncmp(err, "ut.ini:1: ", 10) == 0 || strncmp(err, "ut.ini:3: ", 10) == 0) && strstr(err, "TLS"));
#endif
	lg_cfg_free(c);
	/* auth = none is fine on loopback listeners, and on the default one */
	{
		static const char *const ok[] = {"[gateway]\nauth = none\n",
		                                 "[gateway]\nlisten = 127.0.0.1:8080\nauth = none\n",
		                                 "[gateway]\nlisten = [::1]:8080\nauth = none\n",
		                                 "[gateway]\nlisten = localhost:8080\nauth = none\n"};
		for (i = 0; i < LG_COUNTOF(ok); i++) {
			c = ut_cfg(ok[i], strlen(ok[i]), err, sizeof err);
			ut_case("%s: %s", UT_ESCZ(ok[i]), err);
			ASSERT(c != NULL && c->auth_none == 1);
			lg_cfg_free(c);
		}
	}
	/* a fallback of the form provider/model need not be a configured model;
	 * budgets of every period */
	c = ut_cfg(S("[provider.p]\ntype = mock\ndirect = yes\n[model.m]\ntarget = p x\nfallbacks = p/any\n"
	             "[key.a]\nsecret = x\nbudget = 1/week\n[key.b]\nsecret = y\nbudget = 0.5/total\n"),
	           err, sizeof err);
	ut_case("fallback p/any, budgets: %s", err);
	if (ASSERT(c != NULL && c->nkeys == 2)) {
		ASSERT(c->keys[0]->period == LG_PERIOD_WEEK && c->keys[0]->budget == 1);
		ASSERT(c->keys[1]->period == LG_PERIOD_TOTAL && c->keys[1]->budget == 0.5);
	}
	lg_cfg_free(c);
	/* a secret file with the secret on its first line only */
	snprintf(text, sizeof text, "[gateway]\nadmin_key = file:%s\n", ut_secret_path);
	c = ut_cfg(text, strlen(text), err, sizeof err);
	ut_case("admin_key = file: %s", err);
	ASSERT(c != NULL && ut_zeq(c->admin_key, "sk-file-secret"));
	lg_cfg_free(c);
}

/* Each error names the file and the exact line. */
static const struct {
	const char *text;
	int line, line2; /* line2: another acceptable line (0: none) */
	const char *what;
} ut_cfg_bad[] = {
    /* unknown keys and sections */
    {"[gateway]\nlisten = 127.0.0.1:1\nfoo = 1\n", 3, 0, "unknown key 'foo' in [gateway]"},
    {"[provider.p]\ntype = mock\nbogus = 1\n", 3, 0, "unknown key 'bogus' in [provider.p]"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x\ncolour = red\n", 5, 0, "unknown key 'colour' in [model.m]"},
    {"[key.k]\nsecret = s\nfoo = bar\n", 3, 0, "unknown key 'foo' in [key.k]"},
    {"[gateway]\nListen = 127.0.0.1:1\n", 2, 0, "unknown key 'Listen'"},
    {"; c\n[gateways]\n", 2, 0, "unknown section [gateways]"},
    {"[provider.]\n", 1, 0, "unknown section"},
    {"[gateway.x]\n", 1, 0, "unknown section"},
    {"\n\n[models.x]\n", 3, 0, "unknown section [models.x]"},
    {"[provider.a b]\n", 1, 0, "unknown section"},
    {"[]\n", 1, 0, "unknown section"},
    {"[gateway\n", 1, 0, "without closing"},
    {"[gateway] x\n", 1, 0, "without closing"},
    /* key outside a section, malformed lines */
    {"# top\nlisten = 127.0.0.1:1\n", 2, 0, "outside of any section"},
    {"; c\r\nfoo = 1\r\n", 2, 0, "outside of any section"},
    {"[gateway]\nlisten\n", 2, 0, "expected 'key = value'"},
    {"[gateway]\n = x\n", 2, 0, "empty key"},
    /* durations, sizes, numbers, booleans, enums */
    {"[gateway]\nheader_timeout = 10x\n", 2, 0, "expected a duration"},
    {"[gateway]\nidle_timeout = -1s\n", 2, 0, "expected a duration"},
    {"[gateway]\nidle_timeout =\n", 2, 0, "expected a duration"},
    {"[gateway]\nconnect_timeout = 10 seconds\n", 2, 0, "expected a duration"},
    {"[gateway]\nfirst_byte_timeout = 1e400s\n", 2, 0, "expected a duration"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x\naffinity = soon\n", 5, 0, "expected a duration"},
    {"[gateway]\nmax_body = 16q\n", 2, 0, "expected a size"},
    {"[gateway]\nmax_body = 5g\n", 2, 0, "expected a size"},
    {"[gateway]\nmax_body = -1\n", 2, 0, "expected a size"},
    {"[gateway]\nmax_header = 100\n", 2, 0, "at least 256"},
    {"[gateway]\nmax_attempts = 0\n", 2, 0, "between 1 and"},
    {"[gateway]\nmax_attempts = 17\n", 2, 0, "between 1 and"},
    {"[gateway]\nmax_connections = 0\n", 2, 0, "at least 1"},
    {"[gateway]\nworkers = -1\n", 2, 0, "whole number"},
    {"[gateway]\nworkers = 1.5\n", 2, 0, "whole number"},
    {"[gateway]\nworkers = 3000000000\n", 2, 0, "whole number"},
    {"[gateway]\nworkers = two\n", 2, 0, "whole number"},
    {"[gateway]\nzdr = maybe\n", 2, 0, "expected yes or no"},
    {"[gateway]\nzdr = maybe", 2, 0, "expected yes or no"}, /* no newline at the end */
    {"[provider.p]\ntype = mock\ndirect = 2\n", 3, 0, "expected yes or no"},
    {"[gateway]\nmetrics = everyone\n", 2, 0, "unknown metrics mode"},
    {"[gateway]\nlog_level = verbose\n", 2, 0, "unknown log_level"},
    {"[gateway]\nauth = maybe\n", 2, 0, "unknown auth mode"},
    {"[key.k]\nsecret = s\ndata_collection = maybe\n", 3, 0, "unknown data_collection"},
    {"[key.k]\nsecret = s\nrpm = lots\n", 3, 0, "whole number"},
    {"\n\n; x\n# y\n\n[gateway]\n\n\nzdr = maybe\n", 9, 0, "expected yes or no"},
    /* providers */
    {"[provider.p]\ntype = mock\n[provider.q]\ntype = mock\n[provider.p]\ntype = mock\n", 5, 0, "defined twice"},
    {"[gateway]\n[provider.p]\nbase_url = http://h\n", 2, 0, "has no type"},
    {"[provider.p]\ntype = bogus\n", 2, 0, "unknown provider type"},
    {"[provider.p]\ntype = azure\n", 1, 0, "needs a base_url"},
    {"[provider.p]\ntype = openai\nbase_url = ftp://x\n", 3, 0, "http:// or https://"},
    {"[provider.p]\ntype = openai\nbase_url = http://\n", 3, 0, "base_url"},
    {"[provider.p]\ntype = openai\nbase_url = http://h:0/v1\n", 3, 0, "bad port"},
    {"[provider.p]\ntype = openai\nbase_url = http://h:65536\n", 3, 0, "bad port"},
    {"[provider.p]\ntype = openai\nbase_url = http://h/a b\n", 3, 0, "unexpected character"},
    {"[provider.p]\ntype = mock\nheader = NoColon\n", 3, 0, "Name: value"},
    {"[provider.p]\ntype = mock\nheader = Bad Name: x\n", 3, 0, "Name: value"},
    {"[provider.p]\ntype = mock\nheader = : x\n", 3, 0, "Name: value"},
    {"[provider.p]\ntype = mock\nheader = X-A: a\rb\n", 3, 0, "control character"},
    /* secrets */
    {"[gateway]\n\n[key.k]\nmodels = *\n", 3, 0, "key k has no secret"},
    {"[key.k]\nsecret = a\n[key.k]\nsecret = b\n", 3, 0, "defined twice"},
    {"[gateway]\nadmin_key = env:LLMGW_UT_UNSET\n", 2, 0, "LLMGW_UT_UNSET is not set"},
    {"[gateway]\nadmin_key = env:LLMGW_UT_EMPTY\n", 2, 0, "LLMGW_UT_EMPTY is not set"},
    {"[provider.p]\ntype = mock\napi_key = env:LLMGW_UT_UNSET\n", 3, 0, "is not set"},
    {"[key.k]\nsecret = env:LLMGW_UT_UNSET\n", 2, 0, "is not set"},
    {"[key.k]\nsecret = file:/nonexistent/llmgw-ut-secret\n", 2, 0, "cannot read secret file"},
    {"[key.k]\nsecret = file:@EMPTY@\n", 2, 0, "is empty"},
    {"[key.k]\nsecret = sha256:abcd\n", 2, 0, "64 hex digits"},
    {"[key.k]\nsecret = sha256:zz0000000000000000000000000000000000000000000000000000000000000z\n", 2, 0,
     "not hex"},
    /* models and targets */
    {"[provider.p]\ntype = mock\n\n[model.m]\ntarget = p x\ntarget = nosuch y\n", 6, 0, "unknown provider 'nosuch'"},
    {"[provider.p]\ntype = mock\n[model.m]\naliases = x\n", 3, 0, "has no target"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p\n", 4, 0, "provider name and an upstream model"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget =\n", 4, 0, "provider name and an upstream model"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x in=abc\n", 4, 0, "number from 0 to 1e12"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x in=-1\n", 4, 0, "number from 0 to 1e12"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x in=1usd\n", 4, 0, "number from 0 to 1e12"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x foo=1\n", 4, 0, "unknown target option 'foo'"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x in\n", 4, 0, "not name=value"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x\nstrategy = random\n", 5, 0, "unknown strategy"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x\nfallbacks = nope\n", 3, 5, "fallback 'nope'"},
    /* budgets */
    {"[key.k]\nsecret = s\nbudget = 50\n", 3, 0, "budget must be USD/period"},
    {"[key.k]\nsecret = s\nbudget = 50/year\n", 3, 0, "unknown budget period"},
    {"[key.k]\nsecret = s\nbudget = /month\n", 3, 0, "budget must be USD/period"},
    {"[key.k]\nsecret = s\nbudget = 50/\n", 3, 0, "budget must be USD/period"},
    {"[key.k]\nsecret = s\nbudget = $50/month\n", 3, 0, "budget must be USD/period"},
    /* issue 17.9: control bytes, keys set twice */
    {"[key.k]\nsecret = a\x01b\n", 2, 0, "control character"},
    {"[key.k]\nsecret = a\x7f\n", 2, 0, "control character"},
    {"[key.k]\nsecret = a\nsecret = b\n", 3, 0, "first on line 2"},
    {"[key.k]\nsecret = a\nrpm = 1\nrpm = 2\n", 4, 0, "'rpm' is set twice"},
    {"[provider.p]\ntype = mock\ntype = mock\n", 3, 0, "set twice"},
    {"[gateway]\nmax_body = 1k\n[key.k]\nsecret = s\n[gateway]\nmax_body = 2k\n", 6, 0, "first on line 2"},
    {"[provider.p]\ntype = mock\n[provider.p]\ntype = mock\n", 3, 0, "defined twice (first on line 1)"},
    {"[key.k]\nsecret = s\n[key.k]\nsecret = t\n", 3, 0, "defined twice (first on line 1)"},
    /* issue 17.10: what start-up refuses, with the line */
    {"[gateway]\nlisten = 127.0.0.1:99999\n", 2, 0, "out of range"},
    {"[gateway]\nlisten = nonsense\n", 2, 0, "expected HOST:PORT"},
    {"[gateway]\nlisten = 127.0.0.1:\n", 2, 0, "no port"},
    {"[gateway]\nlisten = example.com:80\n", 2, 0, "not an IP address"},
    {"[gateway]\nlisten = 127.0.0.1:80 tls\n", 2, 0, "needs tls_cert"},
    {"[gateway]\nlisten = 127.0.0.1:80 fast\n", 2, 0, "expected ADDR, ADDR tls or ADDR plain"},
    {"[gateway]\nstate_dir = /nonexistent-llmgw/state\n", 2, 0, "state_dir"},
    {"[gateway]\naccess_log = /nonexistent-llmgw/a.log\n", 2, 0, "access_log"},
};

static void t_ini_errors(void)
{
	size_t i;
	ut_cfg_env();
	for (i = 0; i < LG_COUNTOF(ut_cfg_bad); i++) {
		const char *lines[1];
		char err[512], want[32], want2[32], *text;
		size_t n;
		struct lg_cfg *c;
		lines[0] = ut_cfg_bad[i].text;
		text = ut_cfg_text(lines, 1, "", &n);
		c = ut_cfg(text, n, err, sizeof err);
		snprintf(want, sizeof want, "ut.ini:%d: ", ut_cfg_bad[i].line);
		snprintf(want2, sizeof want2, "ut.ini:%d: ", ut_cfg_bad[i].line2);
		ut_case("config %s: got \"%s\", want \"%s%s\"", UT_ESCZ(ut_cfg_bad[i].text), err, want, ut_cfg_bad[i].what);
		ASSERT(c == NULL);
		ASSERT(strncmp(err, want, strlen(want)) == 0 ||
		       (ut_cfg_bad[i].line2 && strncmp(err, want2, strlen(want2)) == 0));
		ASSERT(strstr(err, ut_cfg_bad[i].what) != NULL);
		lg_cfg_free(c);
		free(text);
	}
}

/* Secrets never appear in an error message. */
static void t_ini_secret_not_echoed(void)
{
	char err[512];
	struct lg_cfg *c = ut_cfg(S("[key.k]\nsecret = sha256:SECRETzz00000000000000000000000000000000000000000000000000000000\n"),
	                          err, sizeof err);
	ut_case("%s", err);
	ASSERT(c == NULL && !strstr(err, "SECRET"));
	c = ut_cfg(S("[provider.p]\ntype = openai\napi_key = TOPSECRET\nbase_url = ftp://x\n"), err, sizeof err);
	ut_case("%s", err);
	ASSERT(c == NULL && !strstr(err, "TOPSECRET"));
	c = ut_cfg(S("[key.k]\nsecret = TOPSECRET\n[key.k]\nsecret = TOPSECRET2\n"), err, sizeof err);
	ut_case("%s", err);
	ASSERT(c == NULL && !strstr(err, "TOPSECRET"));
}

/* Errors found once the whole file is read name a line too (CONFIG.md:
 * "A config error names the file, the line and what is wrong"). */
static void ut_cfg_expect(const char *text, int line, int line2, const char *what)
{
	char err[512], want[32], want2[32];
	struct lg_cfg *c = ut_cfg(text, strlen(text), err, sizeof err);
	snprintf(want, sizeof want, "ut.ini:%d: ", line);
	snprintf(want2, sizeof want2, "ut.ini:%d: ", line2);
	ut_case("config %s: got \"%s\", want \"%s...%s\"", UT_ESCZ(text), err, want, what);
	ASSERT(c == NULL && strstr(err, what) != NULL);
	ASSERT(strncmp(err, want, strlen(want)) == 0 || (line2 && strncmp(err, want2, strlen(want2)) == 0));
	lg_cfg_free(c);
}

/* auth = none with a listener that is not loopback: the error should name
 * the listen line (or the auth line). */
static void t_ini_auth_none_line(void)
{
	ut_cfg_expect("[gateway]\nlisten = 0.0.0.0:8080\nauth = none\n", 2, 3, "auth = none");
	ut_cfg_expect("[gateway]\nauth = none\nlisten = 127.0.0.1:1\nlisten = 10.0.0.1:8080\n", 4, 2, "auth = none");
}

/* A model name used twice: the line of the second [model.m] header, as for
 * a provider or key defined twice; an alias that is another model's name:
 * the aliases line (or the other model's header). */
static void t_ini_duplicate_model_line(void)
{
	ut_cfg_expect("[provider.p]\ntype = mock\n[model.m]\ntarget = p x\n[model.m]\ntarget = p y\n", 5, 0,
	              "already used");
	ut_cfg_expect("[provider.p]\ntype = mock\n[model.a]\ntarget = p x\naliases = b\n[model.b]\ntarget = p y\n", 5, 6,
	              "already used");
}

/* proxy = http://host:port: the port is read into a long with no bound, so
 * a long digit string overflows (undefined; UBSan aborts) and in practice
 * wraps: "h:18446744073709559696" (2^64 + 8080) is taken as port 8080.
 * Found by the ini fuzz target: tests/corpus/ini/crash-proxy-port-overflow. */
static void t_ini_proxy_port_overflow(void)
{
	static const char *const bad[] = {"[gateway]\nproxy = http://h:18446744073709559696\n",
	                                  "[gateway]\nproxy = http://h:99999999999999999999\n",
	                                  "[gateway]\nproxy = http://h:65536\n"};
	size_t i;
	for (i = 0; i < LG_COUNTOF(bad); i++) {
		char err[256];
		struct lg_cfg *c = ut_cfg(bad[i], strlen(bad[i]), err, sizeof err);
		ut_case("%s: %s", UT_ESCZ(bad[i]), c ? "accepted" : err);
		ASSERT(c == NULL && strstr(err, "proxy"));
		lg_cfg_free(c);
	}
}

/* context= and max_output= are parsed as doubles: a value past the range
 * must be an error, never a negative context window (it once was a cast
 * to long, undefined past LONG_MAX). Found by the ini fuzz target:
 * tests/corpus/ini/crash-target-context-overflow. */
static void t_ini_target_long_overflow(void)
{
	static const char *const opts[] = {"context=1e30", "max_output=1e30", "context=9223372036854775808"};
	size_t i;
	for (i = 0; i < LG_COUNTOF(opts); i++) {
		char text[256], err[256];
		struct lg_cfg *c;
		snprintf(text, sizeof text, "[provider.p]\ntype = mock\n[model.m]\ntarget = p x %s\n", opts[i]);
		c = ut_cfg(text, strlen(text), err, sizeof err);
		ut_case("target option %s: %s context %lld max_output %lld", opts[i], c ? "accepted" : err,
		        (long long)(c ? c->models[0]->t[0].context : 0), (long long)(c ? c->models[0]->t[0].max_output : 0));
		/* an error, or a value that is not negative */
		ASSERT(c == NULL ? strncmp(err, "ut.ini:4: ", 10) == 0
		                 : c->models[0]->t[0].context >= 0 && c->models[0]->t[0].max_output >= 0);
		lg_cfg_free(c);
	}
}

/* Only an http:// proxy is supported (CONFIG.md: "HTTP CONNECT proxy");
 * "https://p:3128" is taken as a host named "https://p", "http:p:1" as the
 * host "http:p", found only when the first upstream request fails. */
static void t_ini_proxy_scheme(void)
{
	static const char *const bad[] = {"[gateway]\nproxy = https://proxy.example:3128\n",
	                                  "[gateway]\nproxy = socks5://proxy.example:1080\n",
	                                  "[gateway]\nproxy = http:proxy.example:3128\n"};
	size_t i;
	char err[256];
	struct lg_cfg *c = ut_cfg(S("[gateway]\nproxy = http://u:p@127.0.0.1:3128/\n"), err, sizeof err);
	ut_case("a good proxy: %s", err);
	ASSERT(c != NULL);
	lg_cfg_free(c);
	for (i = 0; i < LG_COUNTOF(bad); i++) {
		c = ut_cfg(bad[i], strlen(bad[i]), err, sizeof err);
		ut_case("%s: %s", UT_ESCZ(bad[i]), c ? "accepted" : err);
		ASSERT(c == NULL && strstr(err, "proxy"));
		lg_cfg_free(c);
	}
}

/* lg_cfg_load reads a file; a missing file is an error naming it. */
static void t_ini_load(void)
{
	char path[64] = "/tmp/llmgw-ut-cfg-XXXXXX", err[512];
	static const char text[] = "[provider.echo]\ntype = mock\n[model.m]\ntarget = echo x\n[key.k]\nsecret = s\n";
	struct lg_cfg *c;
	int fd = mkstemp(path);
	if (!ASSERT(fd >= 0)) return;
	ASSERT(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1));
	close(fd);
	err[0] = 0;
	c = lg_cfg_load(path, err, sizeof err);
	ut_case("%s: %s", path, err);
	ASSERT(c != NULL && c->nmodels == 1 && ut_zeq(c->path, path));
	lg_cfg_free(c);
	unlink(path);
	err[0] = 0;
	c = lg_cfg_load(path, err, sizeof err);
	ut_case("missing file: %s", err);
	ASSERT(c == NULL && strncmp(err, path, strlen(path)) == 0);
}

/* The reader by itself: comment rules, trimming, line numbers. */
static void t_ini_reader(void)
{
	static const char text[] = "; c1\n"
	                           "# c2\n"
	                           "  [ sec.x ]  ; c3\n"
	                           "k1=v1\n"
	                           "  k2  =  v 2  \t# c4\r\n"
	                           "k3 = a#b ;c\n"
	                           "k4 = a;b\n"
	                           "k5 =\n"
	                           "k6 = x = y\n"
	                           "\n"
	                           "last=1";
	static const struct {
		int kind, line;
		const char *a, *b;
	} want[] = {
	    {LG_INI_SECTION, 3, "sec.x", NULL}, {LG_INI_KEY, 4, "k1", "v1"},   {LG_INI_KEY, 5, "k2", "v 2"},
	    {LG_INI_KEY, 6, "k3", "a#b"},       {LG_INI_KEY, 7, "k4", "a;b"},  {LG_INI_KEY, 8, "k5", ""},
	    {LG_INI_KEY, 9, "k6", "x = y"},     {LG_INI_KEY, 11, "last", "1"}, {LG_INI_END, 11, NULL, NULL},
	};
	struct lg_ini in;
	size_t i;
	memset(&in, 0, sizeof in);
	in.s = ut_guard(text, sizeof text - 1);
	in.n = sizeof text - 1;
	for (i = 0; i < LG_COUNTOF(want); i++) {
		int k = lg_ini_next(&in);
		ut_case("item %zu: kind %d line %d", i, k, in.line);
		if (!ASSERT(k == want[i].kind && in.line == want[i].line)) return;
		if (k == LG_INI_SECTION) ASSERT(lg_str_eq(in.section, want[i].a));
		if (k == LG_INI_KEY) ASSERT(lg_str_eq(in.key, want[i].a) && lg_str_eq(in.value, want[i].b));
	}
}

/* Every prefix of the full config, and every line of it removed,
 * duplicated, emptied, garbled or cut: a config or an error, never a crash
 * (run it under ASan: a leak on an error path shows up too). */
static void t_ini_mutations(void)
{
	static const char *const garble[] = {"", "\x01\xff", "=", "[", "]", "x y z", "env:", "file:", "sha256:",
	                                     "-1", "99999999999999999999999", "\"\"", "@EMPTY@", "1e999",
	                                     "http://[::1"};
	size_t n, k, i, g, nl = LG_COUNTOF(ut_cfg_full);
	char err[512], *text;
	int ok = 0, bad = 0;
	const char *lines[LG_COUNTOF(ut_cfg_full) + 1];
	ut_cfg_env();
	text = ut_cfg_text(ut_cfg_full, nl, "\n", &n);
	for (k = 0; k <= n; k++) {
		struct lg_cfg *c = ut_cfg(text, k, err, sizeof err);
		ut_case("prefix of %zu bytes: %s", k, err);
		if (c) ok++;
		else bad++, ASSERT(strncmp(err, "ut.ini:", 7) == 0 && strlen(err) > 8);
		lg_cfg_free(c);
	}
	free(text);
	for (i = 0; i < nl; i++) {
		for (g = 0; g < LG_COUNTOF(garble) + 4; g++) {
			char line[512];
			size_t m = 0, x;
			struct lg_cfg *c;
			const char *eq = strchr(ut_cfg_full[i], '=');
			for (x = 0; x < nl; x++) {
				if (x != i) {
					lines[m++] = ut_cfg_full[x];
					continue;
				}
				if (g == 0) continue; /* removed */
				if (g == 1) {         /* duplicated */
					lines[m++] = ut_cfg_full[x];
					lines[m++] = ut_cfg_full[x];
					continue;
				}
				if (g == 2) { /* cut in half */
					snprintf(line, sizeof line, "%.*s", (int)(strlen(ut_cfg_full[x]) / 2), ut_cfg_full[x]);
				} else if (g == 3) { /* upper case */
					size_t y;
					snprintf(line, sizeof line, "%s", ut_cfg_full[x]);
					for (y = 0; line[y]; y++) line[y] = (char)toupper((unsigned char)line[y]);
				} else { /* another value */
					snprintf(line, sizeof line, "%.*s= %s", eq ? (int)(eq - ut_cfg_full[x]) : 0, ut_cfg_full[x],
					         garble[g - 4]);
				}
				lines[m++] = line;
			}
			text = ut_cfg_text(lines, m, "\n", &n);
			c = ut_cfg(text, n, err, sizeof err);
			ut_case("line %zu changed (%zu): %s", i + 1, g, err);
			if (c) ok++;
			else bad++, ASSERT(strncmp(err, "ut.ini:", 7) == 0 && strlen(err) > 8);
			lg_cfg_free(c);
			free(text);
		}
	}
	ut_case("%d configs, %d errors", ok, bad);
	ASSERT(ok > 0 && bad > 0);
}

/* ===== url: base_url ===================================================== */

static void t_url(void)
{
	static const struct {
		const char *url;
		int ok, port, tls;
		const char *host, *path;
	} cases[] = {
	    {"http://api.example.com/v1", 1, 80, 0, "api.example.com", "/v1"},
	    {"http://127.0.0.1:11434/v1/", 1, 11434, 0, "127.0.0.1", "/v1"},
	    {"http://h", 1, 80, 0, "h", ""},
	    {"http://h/", 1, 80, 0, "h", ""},
	    {"http://h//", 1, 80, 0, "h", ""},
	    {"http://h:8080", 1, 8080, 0, "h", ""},
	    {"http://h:1/a/b", 1, 1, 0, "h", "/a/b"},
	    {"http://h:65535", 1, 65535, 0, "h", ""},
	    {"https://h", 1, 443, 1, "h", ""},
	    {"https://api.openai.com/v1", 1, 443, 1, "api.openai.com", "/v1"},
	    {"http://[::1]:8080/x", 1, 8080, 0, "::1", "/x"},
	    {"http://[::1]/x", 1, 80, 0, "::1", "/x"},
	    {"http://[fe80::1%25eth0]:81", 1, 81, 0, "fe80::1%25eth0", ""},
	    {"ftp://h", 0, 0, 0, NULL, NULL},
	    {"http://", 0, 0, 0, NULL, NULL},
	    {"https://", 0, 0, 0, NULL, NULL},
	    {"http:/h", 0, 0, 0, NULL, NULL},
	    {"h:80", 0, 0, 0, NULL, NULL},
	    {"http://:80", 0, 0, 0, NULL, NULL},
	    {"http:///v1", 0, 0, 0, NULL, NULL},
	    {"http://h:", 0, 0, 0, NULL, NULL},
	    {"http://h:/v1", 0, 0, 0, NULL, NULL},
	    {"http://h:0", 0, 0, 0, NULL, NULL},
	    {"http://h:65536", 0, 0, 0, NULL, NULL},
	    {"http://h:99999999999999999999", 0, 0, 0, NULL, NULL},
	    {"http://h:80x", 0, 0, 0, NULL, NULL},
	    {"http://h:-1", 0, 0, 0, NULL, NULL},
	    {"http://[::1", 0, 0, 0, NULL, NULL},
	    {"http://[]:80", 0, 0, 0, NULL, NULL},
	    {"http://h x", 0, 0, 0, NULL, NULL},
	    {"http://h/a?b", 0, 0, 0, NULL, NULL},
	    {"http://h/#x", 0, 0, 0, NULL, NULL},
	    {"http://h\x01", 0, 0, 0, NULL, NULL},
	};
	char err[256];
	struct lg_cfg *c = ut_cfg("", 0, err, sizeof err);
	struct lg_cfgp p;
	size_t i;
	if (!ASSERT(c != NULL)) return;
	memset(&p, 0, sizeof p);
	p.c = c, p.file = "u.ini", p.line = 7, p.err = err, p.errlen = sizeof err;
	for (i = 0; i <= LG_COUNTOF(cases) + 1; i++) {
		struct lg_provider pv;
		char host[300];
		const char *url;
		int r;
		if (i < LG_COUNTOF(cases)) {
			url = cases[i].url;
		} else { /* the longest host name, and one longer */
			memset(host, 'a', sizeof host);
			memcpy(host, "http://", 7);
			host[i == LG_COUNTOF(cases) ? 7 + 253 : 7 + 254] = 0;
			url = host;
		}
		memset(&pv, 0, sizeof pv);
		err[0] = 0;
		r = lg_cfg_url(&p, &pv, lg_str_of(ut_guard(url, strlen(url)), strlen(url)));
		ut_case("base_url %s: %d %s host %s port %d path %s", UT_ESCZ(url), r, err, pv.host ? pv.host : "-", pv.port,
		        pv.base_path ? pv.base_path : "-");
		if (i >= LG_COUNTOF(cases)) {
			ASSERT(i == LG_COUNTOF(cases) ? r == 0 && strlen(pv.host) == 253 : r == -1);
			continue;
		}
		if (cases[i].ok) {
			char origin[300];
			if (!ASSERT(r == 0)) continue;
			snprintf(origin, sizeof origin, "%s:%d%s", cases[i].host, cases[i].port, cases[i].tls ? "+tls" : "");
			ASSERT(ut_zeq(pv.host, cases[i].host) && pv.port == cases[i].port && pv.tls == cases[i].tls);
			ASSERT(ut_zeq(pv.base_path, cases[i].path) && ut_zeq(pv.base_url, url) && ut_zeq(pv.origin, origin));
		} else {
			ASSERT(r == -1 && strncmp(err, "u.ini:7: ", 9) == 0);
		}
	}
	lg_cfg_free(c);
}

/* After "[v6]" only ":port" or "/path" may follow; "http://[::1]x/v1" is
 * taken with the base path "x/v1" (requests would go out as "POST x/v1/..."). */
static void t_url_ipv6_trailing(void)
{
	static const char *const bad[] = {"http://[::1]x/v1", "http://[::1]80", "http://[::1]@evil"};
	char err[256];
	struct lg_cfg *c = ut_cfg("", 0, err, sizeof err);
	struct lg_cfgp p;
	size_t i;
	if (!ASSERT(c != NULL)) return;
	memset(&p, 0, sizeof p);
	p.c = c, p.file = "u.ini", p.line = 7, p.err = err, p.errlen = sizeof err;
	for (i = 0; i < LG_COUNTOF(bad); i++) {
		struct lg_provider pv;
		int r;
		memset(&pv, 0, sizeof pv);
		err[0] = 0;
		r = lg_cfg_url(&p, &pv, lg_strz(bad[i]));
		ut_case("base_url %s: %d host %s path %s", bad[i], r, pv.host ? pv.host : "-", pv.base_path ? pv.base_path : "-");
		ASSERT(r == -1 && strncmp(err, "u.ini:7: ", 9) == 0);
	}
	lg_cfg_free(c);
}

/* ===== http: request and response heads ================================ */

static int ut_view_in(lg_str v, const char *b, size_t n)
{
	return v.n == 0 || (v.p >= b && v.p + v.n <= b + n);
}

static const struct {
	const char *s, *method, *target;
	int minor, nh;
	const char *h[8]; /* name, value pairs to check, in order */
} ut_req_ok[] = {
    {"GET / HTTP/1.1\r\n\r\n", "GET", "/", 1, 0, {NULL}},
    {"GET /v1/models?x=1&y=%20 HTTP/1.0\r\nHost: a\r\n\r\n", "GET", "/v1/models?x=1&y=%20", 0, 1, {"Host", "a"}},
    {"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8080\r\nContent-Type: application/json\r\n"
     "Content-Length: 2\r\nAuthorization: Bearer sk-1\r\n\r\n",
     "POST", "/v1/chat/completions", 1, 4,
     {"Host", "localhost:8080", "Content-Type", "application/json", "Content-Length", "2", "Authorization",
      "Bearer sk-1"}},
    {"GET / HTTP/1.1\nHost: a\n\n", "GET", "/", 1, 1, {"Host", "a"}},
    {"GET / HTTP/1.1\r\nHost: a\n\r\n", "GET", "/", 1, 1, {"Host", "a"}},
    {"GET / HTTP/1.1\nHost: a\r\n\n", "GET", "/", 1, 1, {"Host", "a"}},
    {"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/", 1, 1, {"Host", "a"}},
    {"\r\nGET / HTTP/1.1\r\n\r\n", "GET", "/", 1, 0, {NULL}},
    {"\nGET / HTTP/1.1\n\n", "GET", "/", 1, 0, {NULL}},
    {"GET / HTTP/1.1\r\nX-A:   v  \t\r\nX-Empty:\r\nX-Tab: a\tb\r\nX-Utf: \xc3\xa9\r\n\r\n", "GET", "/", 1, 4,
     {"X-A", "v", "X-Empty", "", "X-Tab", "a\tb", "X-Utf", "\xc3\xa9"}},
    {"M-SEARCH * HTTP/1.1\r\n\r\n", "M-SEARCH", "*", 1, 0, {NULL}},
    {"OPTIONS * HTTP/1.1\r\n\r\n", "OPTIONS", "*", 1, 0, {NULL}},
    {"GET http://x/y?z HTTP/1.1\r\n\r\n", "GET", "http://x/y?z", 1, 0, {NULL}},
    {"DELETE /a HTTP/1.9\r\n\r\n", "DELETE", "/a", 9, 0, {NULL}},
    {"get /~a!$&'()*+,;=:@ HTTP/1.1\r\n\r\n", "get", "/~a!$&'()*+,;=:@", 1, 0, {NULL}},
    {"GET / HTTP/1.1\r\n!#$%&'*+-.^_`|~09azAZ: x\r\nA:b\r\n\r\n", "GET", "/", 1, 2,
     {"!#$%&'*+-.^_`|~09azAZ", "x", "A", "b"}},
    {"GET / HTTP/1.1\r\nX: a: b\r\n\r\n", "GET", "/", 1, 1, {"X", "a: b"}},
};

static void ut_http_req_valid(const char *s, size_t n, const char *method, const char *target, int minor, int nh,
                              const char *const *h)
{
	struct lg_http m;
	const char *b = ut_guard(s, n);
	int r = lg_http_parse_req(b, n, &m), i;
	size_t k;
	ut_case("request %s: got %d", ut_esc(s, n), r);
	if (nh > LLMGW_MAX_HEADERS) { /* a build with a small limit */
		ASSERT(r == LG_HTTP_TOOMANY);
		return;
	}
	if (!ASSERT(r == (int)n)) return;
	ASSERT(lg_str_eq(m.method, method) && lg_str_eq(m.target, target) && m.minor == minor && m.nh == nh);
	ASSERT(ut_view_in(m.method, b, n) && ut_view_in(m.target, b, n));
	for (i = 0; i < m.nh; i++) {
		ASSERT(ut_view_in(m.h[i].name, b, n) && ut_view_in(m.h[i].value, b, n));
		if (i < 4 && h && h[2 * i]) {
			ASSERT(lg_str_eq(m.h[i].name, h[2 * i]) && lg_str_eq(m.h[i].value, h[2 * i + 1]));
			ASSERT(lg_str_eq(lg_http_get(&m, h[2 * i]), h[2 * i + 1]));
		}
	}
	ASSERT(lg_http_get(&m, "No-Such-Header").p == NULL);
	/* what follows the head (a body, the next request) is not its business */
	{
		char more[8192];
		size_t extra = strlen("BODY GET / HTTP/1.1\r\n\r\n");
		memcpy(more, s, n);
		memcpy(more + n, "BODY GET / HTTP/1.1\r\n\r\n", extra);
		ASSERT(lg_http_parse_req(ut_guard(more, n + extra), n + extra, &m) == (int)n);
	}
	/* one byte at a time: every strict prefix needs more */
	for (k = 0; k < n; k++) {
		r = lg_http_parse_req(ut_guard(s, k), k, &m);
		ut_case("request %s cut to %zu: got %d", ut_esc(s, n), k, r);
		ASSERT(r == LG_HTTP_PARTIAL);
	}
}

/* lg_http_head_end agrees with the parser on where the head ends, whole
 * and when the bytes come one at a time (with the server's "from"). */
static void ut_http_head_end(const char *s, size_t n)
{
	size_t k, scan = 0, he;
	ut_case("head_end %s", ut_esc(s, n));
	ASSERT(lg_http_head_end(ut_guard(s, n), n, 0) == n);
	for (k = 0; k <= n; k++) {
		const char *b = ut_guard(s, k);
		he = lg_http_head_end(b, k, 0);
		ut_case("head_end %s cut to %zu: got %zu", ut_esc(s, n), k, he);
		ASSERT(he == (k == n ? n : 0));
		he = lg_http_head_end(b, k, scan);
		ut_case("head_end %s cut to %zu, from %zu: got %zu", ut_esc(s, n), k, scan, he);
		ASSERT(he == (k == n ? n : 0));
		scan = k;
	}
}

static void t_http_req_valid(void)
{
	size_t i;
	for (i = 0; i < LG_COUNTOF(ut_req_ok); i++) {
		const char *s = ut_req_ok[i].s;
		ut_http_req_valid(s, strlen(s), ut_req_ok[i].method, ut_req_ok[i].target, ut_req_ok[i].minor,
		                  ut_req_ok[i].nh, ut_req_ok[i].h);
		if (s[0] != '\r' && s[0] != '\n') ut_http_head_end(s, strlen(s));
	}
}

/* The server asks lg_http_head_end whether a head is complete before it
 * parses; with blank lines before the request line (which the parser
 * skips, RFC 9112 section 2.2) it must still wait for the real end. */
static void t_http_head_end_leading_blank_lines(void)
{
	static const char *const reqs[] = {"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "\n\nGET / HTTP/1.1\n\n",
	                                   "\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n"};
	size_t i;
	for (i = 0; i < LG_COUNTOF(reqs); i++) ut_http_head_end(reqs[i], strlen(reqs[i]));
}

/* LLMGW_MAX_HEADERS header lines are fine; one more is LG_HTTP_TOOMANY. */
static void t_http_many_headers(void)
{
	struct lg_buf b;
	struct lg_http m;
	int i, r;
	size_t k, n;
	lg_buf_init(&b, 0);
	lg_buf_addz(&b, "GET / HTTP/1.1\r\n");
	for (i = 0; i < LLMGW_MAX_HEADERS; i++) lg_buf_printf(&b, "X-H%d: v%d\r\n", i, i);
	lg_buf_addz(&b, "\r\n");
	ut_http_req_valid(b.p, b.len, "GET", "/", 1, LLMGW_MAX_HEADERS, NULL);
	ut_http_head_end(b.p, b.len);
	r = lg_http_parse_req(ut_guard(b.p, b.len), b.len, &m);
	{
		char last[32];
		snprintf(last, sizeof last, "v%d", LLMGW_MAX_HEADERS - 1);
		ASSERT(r == (int)b.len && lg_str_eq(m.h[LLMGW_MAX_HEADERS - 1].value, last));
	}
	/* one more */
	b.len -= 2;
	lg_buf_addz(&b, "X-Last: x\r\n\r\n");
	n = b.len;
	r = lg_http_parse_req(ut_guard(b.p, n), n, &m);
	ut_case("%d headers: got %d", LLMGW_MAX_HEADERS + 1, r);
	ASSERT(r == LG_HTTP_TOOMANY);
	for (k = 0; k < n; k++) {
		r = lg_http_parse_req(ut_guard(b.p, k), k, &m);
		ut_case("%d headers cut to %zu: got %d", LLMGW_MAX_HEADERS + 1, k, r);
		ASSERT(r == LG_HTTP_PARTIAL || r == LG_HTTP_TOOMANY);
	}
	lg_buf_free(&b);
}

static const struct {
	const char *s;
	size_t n;
	int code;
	const char *err; /* a word of m.err, or NULL */
} ut_req_bad[] = {
    {S("GE(T / HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, "request line"},
    {S("GET\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET /\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET / \r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET / HTTP/2.0\r\n\r\n"), LG_HTTP_ERR, "version"},
    {S("GET / HTTP/1.1x\r\n\r\n"), LG_HTTP_ERR, "version"},
    {S("GET / HTTP/1\r\n\r\n"), LG_HTTP_ERR, "version"},
    {S("GET / HTTP/1.\r\n\r\n"), LG_HTTP_ERR, "version"},
    {S("GET / http/1.1\r\n\r\n"), LG_HTTP_ERR, "version"},
    {S("GET / HTTP/1.x\r\n\r\n"), LG_HTTP_ERR, "version"},
    {S("GET / HTTP/0.9\r\n\r\n"), LG_HTTP_ERR, "version"},
    {S("GET  / HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET /  HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET / HTTP/1.1 \r\n\r\n"), LG_HTTP_ERR, NULL},
    {S(" GET / HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET\t/ HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET /\x01 HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET /\x80 HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET /\x7f HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("G\x00T / HTTP/1.1\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET / HTTP/1.1\r\r\n\r\n"), LG_HTTP_ERR, NULL},
    {S("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"), LG_HTTP_ERR, "folding"},
    {S("GET / HTTP/1.1\r\n\tX: a\r\n\r\n"), LG_HTTP_ERR, "folding"},
    {S("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), LG_HTTP_ERR, "header"},
    {S("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), LG_HTTP_ERR, "header"},
    {S("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"), LG_HTTP_ERR, "header"},
    {S("GET / HTTP/1.1\r\n: a\r\n\r\n"), LG_HTTP_ERR, "header"},
    {S("GET / HTTP/1.1\r\nX(: a\r\n\r\n"), LG_HTTP_ERR, "header"},
    {S("GET / HTTP/1.1\r\nX\x80: a\r\n\r\n"), LG_HTTP_ERR, "header"},
    {S("GET / HTTP/1.1\r\nX: a\x01" "b\r\n\r\n"), LG_HTTP_ERR, "control character"},
    {S("GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n"), LG_HTTP_ERR, "control character"},
    {S("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), LG_HTTP_ERR, "control character"},
    {S("GET / HTTP/1.1\r\nX: \x00\r\n\r\n"), LG_HTTP_ERR, "control character"},
    {S("GET / HTTP/1.1\r\nX: a\x1b[31m\r\n\r\n"), LG_HTTP_ERR, "control character"},
    {S("GET / HTTP/1.1\r\nX: a\r\n\x01\r\n\r\n"), LG_HTTP_ERR, "header"},
    {S("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), LG_HTTP_ERR, "version"},
};

static void t_http_req_invalid(void)
{
	size_t i, k;
	for (i = 0; i < LG_COUNTOF(ut_req_bad); i++) {
		struct lg_http m;
		const char *s = ut_req_bad[i].s;
		size_t n = ut_req_bad[i].n;
		int r = lg_http_parse_req(ut_guard(s, n), n, &m);
		ut_case("request %s: got %d (%s)", ut_esc(s, n), r, r == LG_HTTP_ERR && m.err ? m.err : "-");
		ASSERT(r == ut_req_bad[i].code);
		if (r == LG_HTTP_ERR) ASSERT(m.err && (!ut_req_bad[i].err || strstr(m.err, ut_req_bad[i].err)));
		/* cut anywhere, it is never a head */
		for (k = 0; k < n; k++) {
			r = lg_http_parse_req(ut_guard(s, k), k, &m);
			ut_case("request %s cut to %zu: got %d", ut_esc(s, n), k, r);
			ASSERT(r == LG_HTTP_PARTIAL || r == ut_req_bad[i].code);
		}
	}
}

/* lg_http_parse_req says it rejects "what can never become a request line
 * without waiting" for the line's end (the server relies on it to answer
 * 400 at once, e.g. to a TLS ClientHello on a plain listener). */
static void t_http_req_early_reject(void)
{
	static const struct {
		const char *s;
		size_t n;
	} early[] = {{S("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")}, /* a TLS ClientHello */
	             {S("\x16")}, {S("GET /\x01")}, {S("GET /\x80")}, {S("\x00")}, {S("GET\t")}};
	size_t i;
	for (i = 0; i < LG_COUNTOF(early); i++) {
		struct lg_http m;
		int r = lg_http_parse_req(ut_guard(early[i].s, early[i].n), early[i].n, &m);
		ut_case("no line end yet %s: got %d", ut_esc(early[i].s, early[i].n), r);
		ASSERT(r == LG_HTTP_ERR);
	}
	/* what may still become a request is not refused */
	{
		static const char *const fine[] = {"GET", "GET /", "GET / HTTP/1.1\r", "\r\n", "\r\nPOST /v1/x?y=\"z\""};
		for (i = 0; i < LG_COUNTOF(fine); i++) {
			struct lg_http m;
			size_t n = strlen(fine[i]);
			ut_case("no line end yet %s", UT_ESCZ(fine[i]));
			ASSERT(lg_http_parse_req(ut_guard(fine[i], n), n, &m) == LG_HTTP_PARTIAL);
		}
	}
}

static void t_http_resp(void)
{
	static const struct {
		const char *s;
		int status, minor, nh;
		const char *reason;
	} ok[] = {
	    {"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n", 200, 1, 2, "OK"},
	    {"HTTP/1.0 404 Not Found\n\n", 404, 0, 0, "Not Found"},
	    {"HTTP/1.1 204\r\n\r\n", 204, 1, 0, ""},
	    {"HTTP/1.1 529 \r\n\r\n", 529, 1, 0, ""},
	    {"HTTP/1.1 100 Continue\r\n\r\n", 100, 1, 0, "Continue"},
	    {"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\n\r\n", 429, 1, 1, "Too Many Requests"},
	    {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n", 200, 1, 2, "OK"},
	    {"HTTP/1.1 999 \xc3\xa9\r\n\r\n", 999, 1, 0, "\xc3\xa9"},
	};
	static const struct {
		const char *s;
		size_t n;
	} bad[] = {
	    {S("HTTP/1.1 20 OK\r\n\r\n")},        {S("HTTP/1.1 2000 OK\r\n\r\n")},
	    {S("HTTP/1.1 200OK\r\n\r\n")},        {S("HTTP/2 200\r\n\r\n")},
	    {S("http/1.1 200 OK\r\n\r\n")},       {S("HTTP/1.1  200 OK\r\n\r\n")},
	    {S("XTTP/1.1 200\r\n\r\n")},          {S("HTTP/1.1 abc OK\r\n\r\n")},
	    {S("HTTP/1.1 200 OK\r\nBad Header\r\n\r\n")}, {S("HTTP/1.1\r\n\r\n")},
	    {S("HTTP/1.1 200 OK\r\n folded\r\n\r\n")}, {S("HTTP/3.0 200 OK\r\n\r\n")},
	    {S("HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n")}, {S("<html>")},
	};
	size_t i, k;
	for (i = 0; i < LG_COUNTOF(ok); i++) {
		struct lg_http m;
		const char *s = ok[i].s;
		size_t n = strlen(s);
		const char *b = ut_guard(s, n);
		int r = lg_http_parse_resp(b, n, &m);
		ut_case("response %s: got %d", UT_ESCZ(s), r);
		if (ok[i].nh > LLMGW_MAX_HEADERS) {
			ASSERT(r == LG_HTTP_TOOMANY);
			continue;
		}
		ASSERT(r == (int)n && m.status == ok[i].status && m.minor == ok[i].minor && m.nh == ok[i].nh);
		ASSERT(lg_str_eq(m.reason, ok[i].reason) && ut_view_in(m.reason, b, n));
		ut_http_head_end(s, n);
		for (k = 0; k < n; k++) {
			r = lg_http_parse_resp(ut_guard(s, k), k, &m);
			ut_case("response %s cut to %zu: got %d", UT_ESCZ(s), k, r);
			ASSERT(r == LG_HTTP_PARTIAL);
		}
	}
	/* 100 Continue then the real head, in one buffer */
	{
		static const char two[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
		struct lg_http m;
		const char *b = ut_guard(two, sizeof two - 1);
		int r = lg_http_parse_resp(b, sizeof two - 1, &m);
		ut_case("100 then 200");
		ASSERT(r == 25 && m.status == 100);
		ASSERT(lg_http_parse_resp(b + r, sizeof two - 1 - (size_t)r, &m) == (int)(sizeof two - 1) - r && m.status == 200);
	}
	for (i = 0; i < LG_COUNTOF(bad); i++) {
		struct lg_http m;
		int r = lg_http_parse_resp(ut_guard(bad[i].s, bad[i].n), bad[i].n, &m);
		ut_case("response %s: got %d", ut_esc(bad[i].s, bad[i].n), r);
		ASSERT(r == LG_HTTP_ERR);
		for (k = 0; k < bad[i].n; k++) {
			r = lg_http_parse_resp(ut_guard(bad[i].s, k), k, &m);
			ut_case("response %s cut to %zu: got %d", ut_esc(bad[i].s, bad[i].n), k, r);
			ASSERT(r == LG_HTTP_PARTIAL || r == LG_HTTP_ERR);
		}
	}
	/* not HTTP at all: refused once five bytes are in */
	{
		struct lg_http m;
		ASSERT(lg_http_parse_resp(ut_guard("<html", 5), 5, &m) == LG_HTTP_ERR);
		ASSERT(lg_http_parse_resp(ut_guard("HTTP/", 5), 5, &m) == LG_HTTP_PARTIAL);
	}
}

/* ===== framing: lg_http_framing ======================================== */

static const struct {
	const char *head;
	int ret;
	int64_t clen;
	int chunked, close, expect100;
} ut_framing[] = {
    /* requests (the head starts with a method) */
    {"GET / HTTP/1.1\r\n\r\n", 0, -1, 0, 0, 0},
    {"GET / HTTP/1.0\r\n\r\n", 0, -1, 0, 1, 0},
    {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0, -1, 0, 0, 0},
    {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 0, -1, 0, 0, 0},
    {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 0, -1, 0, 1, 0},
    {"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n", 0, -1, 0, 1, 0},
    {"GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n", 0, -1, 0, 0, 0},
    {"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", 0, -1, 0, 0, 0},
    {"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", 0, -1, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 0, 5, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\ncontent-length: 42\r\n\r\n", 0, 42, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 9007199254740991\r\n\r\n", 0, 9007199254740991LL, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 0, 5, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 0, 5, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5,5\r\n\r\n", 0, 5, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5 , 5\r\n\r\n", 0, 5, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5a\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: , 5\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 0, -1, 1, 0, 0},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, -1, 1, 0, 0},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", -2, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -2, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", -2, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", -2, 0, 0, 0, 0},
    {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", 0, 3, 0, 0, 1},
    {"POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n", 0, -1, 0, 0, 1},
    {"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", 0, -1, 0, 1, 0},
    {"POST / HTTP/1.1\r\nExpect: foo\r\n\r\n", -3, 0, 0, 0, 0},
    /* responses */
    {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 0, -1, 1, 1, 0},
    {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 0, -1, 1, 1, 0},
    {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 0, 10, 0, 0, 0},
    {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, -1, 1, 0, 0},
    {"HTTP/1.0 200 OK\r\n\r\n", 0, -1, 0, 1, 0},
    {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", 0, 2, 0, 0, 0},
    {"HTTP/1.1 200 OK\r\nExpect: foo\r\n\r\n", 0, -1, 0, 0, 0},
    {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 0, -1, 0, 1, 0},
    {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", -1, 0, 0, 0, 0},
    {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", -2, 0, 0, 0, 0},
    {NULL, 0, 0, 0, 0, 0}, /* the end of part 0; part 1: */
    {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0, -1, 0, 1, 0},
    {"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", 0, -1, 0, 1, 0},
    {NULL, 0, 0, 0, 0, 0}, /* part 2: */
    {"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", -1, 0, 0, 0, 0},
    {"POST / HTTP/1.1\r\nContent-Length: \r\nTransfer-Encoding: chunked\r\n\r\n", -1, 0, 0, 0, 0},
};

/* Runs part `part` of ut_framing (parts end at a NULL head). */
static void ut_framing_run(int part)
{
	size_t i;
	int at = 0;
	for (i = 0; i < LG_COUNTOF(ut_framing); i++) {
		const char *s = ut_framing[i].head;
		if (!s) {
			at++;
			continue;
		}
		if (at != part) continue;
		size_t n = strlen(s);
		int req = strncmp(s, "HTTP/", 5) != 0, r;
		struct lg_http m;
		const char *b = ut_guard(s, n);
		r = req ? lg_http_parse_req(b, n, &m) : lg_http_parse_resp(b, n, &m);
		ut_case("%s: parse %d", UT_ESCZ(s), r);
		if (r == LG_HTTP_TOOMANY && LLMGW_MAX_HEADERS < 8) continue; /* a build with a small limit */
		if (!ASSERT(r == (int)n)) continue;
		r = lg_http_framing(&m, req);
		ut_case("%s (%s): got %d clen %lld chunked %d close %d expect100 %d", UT_ESCZ(s), req ? "request" : "response",
		        r, (long long)m.clen, m.chunked, m.close, m.expect100);
		ASSERT(r == ut_framing[i].ret);
		if (r != 0) {
			ASSERT(m.err != NULL);
			continue;
		}
		ASSERT(m.clen == ut_framing[i].clen && m.chunked == ut_framing[i].chunked);
		ASSERT(m.close == ut_framing[i].close && m.expect100 == ut_framing[i].expect100);
	}
}

static void t_framing(void) { ut_framing_run(0); }

/* "close" wins over "keep-alive" (RFC 9112 section 9.3), in one header or
 * in two. */
static void t_framing_close_wins(void) { ut_framing_run(1); }

/* An empty Content-Length is invalid (RFC 9112 section 6.3: 1*DIGIT; a
 * server MUST answer 400), not "no Content-Length". */
static void t_framing_empty_clen(void) { ut_framing_run(2); }

/* ===== chunked: the incremental decoder ================================ */

static const struct {
	const char *in;
	size_t n;
	const char *out; /* decoded */
	size_t outn;
	size_t body; /* bytes of the chunked body; what follows is left over */
} ut_ck_ok[] = {
    {S("5\r\nhello\r\n0\r\n\r\n"), S("hello"), 15},
    {S("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), S("hello world"), 26},
    {S("5;name=value\r\nhello\r\n0;x=\"y z\"\r\n\r\n"), S("hello"), 34},
    {S("5\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n"), S("hello"), 35},
    {S("A\r\n0123456789\r\n0\r\n\r\n"), S("0123456789"), 20},
    {S("a\r\n0123456789\r\n0\r\n\r\n"), S("0123456789"), 20},
    {S("1F\r\n0123456789012345678901234567890\r\n0\r\n\r\n"), S("0123456789012345678901234567890"), 42},
    {S("5\nhello\n0\n\n"), S("hello"), 11},
    {S("5\nhello\n0\nX: y\n\n"), S("hello"), 16},
    {S("005\r\nhello\r\n0000\r\n\r\n"), S("hello"), 20},
    {S("0\r\n\r\n"), S(""), 5},
    {S("4\r\n\r\n\r\n\r\n0\r\n\r\n"), S("\r\n\r\n"), 14},
    {S("3\r\n\x00\xff\n\r\n0\r\n\r\n"), S("\x00\xff\n"), 13},
    {S("5 \r\nhello\r\n0\t\r\n\r\n"), S("hello"), 17},
    {S("1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"), S("abc"), 23},
    /* bytes after the body: a pipelined request stays for the next reader */
    {S("5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"), S("hello"), 15},
    {S("0\r\n\r\nX"), S(""), 5},
    {S("3\r\nabc\r\n0\r\nT: 1\r\n\r\n5\r\nnext!"), S("abc"), 19},
};

struct ut_ck_res {
	char out[256];
	size_t outn;
	long ret; /* of the call that ended the body, or the last code */
	char rest[256];
	size_t restn;
};

/* Feeds in[0..n) to a fresh decoder in pieces ending at cuts[]; each piece
 * is decoded alone (the decoder works in place on what it is given) and
 * placed against the guard page. Stops at the end of the body or at an
 * error; what is left of the piece (moved after the decoded bytes) and the
 * pieces after it are the rest. */
static void ut_ck_feed(const char *in, size_t n, const size_t *cuts, size_t ncuts, struct ut_ck_res *res)
{
	struct lg_chunked d;
	size_t from = 0, c;
	memset(&d, 0, sizeof d);
	memset(res, 0, sizeof *res);
	res->ret = LG_HTTP_PARTIAL;
	for (c = 0; c <= ncuts; c++) {
		size_t to = c < ncuts ? cuts[c] : n, len = to - from, got = len;
		char *b = ut_guard(in + from, len);
		long r = lg_chunked_decode(&d, b, &got);
		if (r == LG_HTTP_ERR) {
			res->ret = r;
			return;
		}
		if (!ASSERT(got <= len && res->outn + got <= sizeof res->out)) return;
		memcpy(res->out + res->outn, b, got);
		res->outn += got;
		if (r >= 0) {
			ASSERT((size_t)r <= len - got);
			res->ret = r;
			memcpy(res->rest, b + got, (size_t)r);
			memcpy(res->rest + r, in + to, n - to);
			res->restn = (size_t)r + n - to;
			return;
		}
		if (!ASSERT(r == LG_HTTP_PARTIAL)) return;
		from = to;
	}
}

static void t_chunked_valid(void)
{
	size_t i, s;
	for (i = 0; i < LG_COUNTOF(ut_ck_ok); i++) {
		const char *in = ut_ck_ok[i].in;
		size_t n = ut_ck_ok[i].n, body = ut_ck_ok[i].body, cuts[512], k;
		struct ut_ck_res res;
		/* whole */
		ut_ck_feed(in, n, NULL, 0, &res);
		ut_case("chunked %s: got %ld %s rest %s", ut_esc(in, n), res.ret, ut_esc(res.out, res.outn),
		        ut_esc(res.rest, res.restn));
		ASSERT(res.ret == (long)(n - body));
		ASSERT(res.outn == ut_ck_ok[i].outn && memcmp(res.out, ut_ck_ok[i].out, res.outn) == 0);
		ASSERT(res.restn == n - body && memcmp(res.rest, in + body, n - body) == 0);
		/* in two pieces, cut everywhere */
		for (s = 0; s <= n; s++) {
			ut_ck_feed(in, n, &s, 1, &res);
			ut_case("chunked %s cut at %zu: got %ld %s rest %s", ut_esc(in, n), s, res.ret, ut_esc(res.out, res.outn),
			        ut_esc(res.rest, res.restn));
			ASSERT(res.ret >= 0);
			ASSERT(res.outn == ut_ck_ok[i].outn && memcmp(res.out, ut_ck_ok[i].out, res.outn) == 0);
			ASSERT(res.restn == n - body && memcmp(res.rest, in + body, n - body) == 0);
		}
		/* one byte at a time */
		for (k = 0; k < n && k < LG_COUNTOF(cuts); k++) cuts[k] = k + 1;
		ut_ck_feed(in, n, cuts, n - 1, &res);
		ut_case("chunked %s byte by byte: got %ld %s", ut_esc(in, n), res.ret, ut_esc(res.out, res.outn));
		ASSERT(res.ret >= 0 && res.outn == ut_ck_ok[i].outn && memcmp(res.out, ut_ck_ok[i].out, res.outn) == 0);
		ASSERT(res.restn == n - body && memcmp(res.rest, in + body, n - body) == 0);
		/* every strict prefix of the body is "more to come" */
		for (k = 0; k < body; k++) {
			ut_ck_feed(in, k, NULL, 0, &res);
			ut_case("chunked %s cut to %zu: got %ld", ut_esc(in, n), k, res.ret);
			ASSERT(res.ret == LG_HTTP_PARTIAL);
		}
	}
}

static void t_chunked_invalid(void)
{
	static const struct {
		const char *in;
		size_t n;
	} bad[] = {
	    {S("x\r\n")},                            /* not hex */
	    {S("\r\n")},                             /* no size */
	    {S(" 5\r\nhello\r\n0\r\n\r\n")},         /* space before the size */
	    {S("-5\r\n")},
	    {S("0x5\r\n")},
	    {S("5x\r\n")},
	    {S("5\r\r\n")},
	    {S("5\rx")},
	    {S("5\r\nhelloX")},                      /* no CRLF after the data */
	    {S("5\r\nhello\rX")},
	    {S("5\r\nhelloworld\r\n")},
	    {S("5\r\nhello\r\n0\r\n\rX")},
	    {S("5;\x01\r\nhello\r\n0\r\n\r\n")},     /* control character in an extension */
	    {S("5;ext\rx\r\nhello\r\n0\r\n\r\n")},   /* a bare CR in an extension (RFC 9112 7.1.1) */
	    {S("10000000000000000\r\n")},            /* 17 hex digits */
	    {S("1000000000000000\r\n")},             /* 16 hex digits: over 15 */
	    {S("ffffffffffffffff\r\n")},
	    {S("0000000000000000\r\n")},
	};
	size_t i, s;
	for (i = 0; i < LG_COUNTOF(bad); i++) {
		struct ut_ck_res res;
		ut_ck_feed(bad[i].in, bad[i].n, NULL, 0, &res);
		ut_case("chunked %s: got %ld", ut_esc(bad[i].in, bad[i].n), res.ret);
		ASSERT(res.ret == LG_HTTP_ERR);
		for (s = 0; s <= bad[i].n; s++) {
			ut_ck_feed(bad[i].in, bad[i].n, &s, 1, &res);
			ut_case("chunked %s cut at %zu: got %ld", ut_esc(bad[i].in, bad[i].n), s, res.ret);
			ASSERT(res.ret == LG_HTTP_ERR);
		}
	}
	/* 15 hex digits is the most: still waiting for the data */
	{
		struct ut_ck_res res;
		ut_ck_feed(S("fffffffffffffff\r\nabc"), NULL, 0, &res);
		ut_case("15 hex digits");
		ASSERT(res.ret == LG_HTTP_PARTIAL && res.outn == 3);
	}
	/* once the body ended, more input is all left over */
	{
		struct lg_chunked d;
		char b[16];
		size_t n = 5;
		memset(&d, 0, sizeof d);
		memcpy(b, "0\r\n\r\n", 5);
		ASSERT(lg_chunked_decode(&d, b, &n) == 0 && n == 0);
		memcpy(b, "abc", 3);
		n = 3;
		ASSERT(lg_chunked_decode(&d, b, &n) == 3 && n == 0 && memcmp(b, "abc", 3) == 0);
	}
}

/* ===== sse: server-sent events ========================================= */

struct ut_sse_want {
	size_t took;
	int fields, ndata;
	const char *data, *event, *id; /* NULL: absent (empty view) */
};

static int ut_view_is(lg_str v, const char *z) { return z ? lg_str_eq(v, z) : v.n == 0; }

static void t_sse_basic(void)
{
	static const struct {
		const char *in;
		struct ut_sse_want w;
	} cases[] = {
	    {"data: hello\n\n", {13, 1, 1, "hello", NULL, NULL}},
	    {"data: hello\r\n\r\n", {15, 1, 1, "hello", NULL, NULL}},
	    {"data: hello\r\rx", {13, 1, 1, "hello", NULL, NULL}},
	    {"data:x\n\n", {8, 1, 1, "x", NULL, NULL}},
	    {"data:  x\n\n", {10, 1, 1, " x", NULL, NULL}},
	    {"data\n\n", {6, 1, 1, "", NULL, NULL}},
	    {"data:\n\n", {7, 1, 1, "", NULL, NULL}},
	    {"data: a:b: c\n\n", {14, 1, 1, "a:b: c", NULL, NULL}},
	    {"data: a\ndata: b\ndata: c\n\n", {25, 3, 3, "a\nb\nc", NULL, NULL}},
	    {"data: a\ndata:\ndata: c\n\n", {23, 3, 3, "a\n\nc", NULL, NULL}},
	    {"data: a\r\ndata: b\rdata: c\n\n", {26, 3, 3, "a\nb\nc", NULL, NULL}},
	    {"event: message_start\ndata: {}\nid: 42\n\n", {38, 3, 1, "{}", "message_start", "42"}},
	    {"event: ping\n\n", {13, 1, 0, NULL, "ping", NULL}},
	    {"retry: 100\nfoo: bar\ndata: x\n\n", {29, 3, 1, "x", NULL, NULL}},
	    {"data: [DONE]\n\ndata: next\n\n", {14, 1, 1, "[DONE]", NULL, NULL}},
	    {": keep-alive\ndata: x\n\n", {22, 1, 1, "x", NULL, NULL}},
	    {"\n\ndata: x\n\n", {11, 1, 1, "x", NULL, NULL}},
	    {"data: x\n: comment inside\n\n", {26, 1, 1, "x", NULL, NULL}},
	    /* incomplete: 0 */
	    {"data: x", {0, 0, 0, NULL, NULL, NULL}},
	    {"data: x\n", {0, 0, 0, NULL, NULL, NULL}},
	    {"data: x\r\n", {0, 0, 0, NULL, NULL, NULL}},
	    {"data: x\r\n\r", {0, 0, 0, NULL, NULL, NULL}}, /* a CR at the very end waits */
	    {"data: x\r\r", {0, 0, 0, NULL, NULL, NULL}},
	    {"data: x\r", {0, 0, 0, NULL, NULL, NULL}},
	    {"", {0, 0, 0, NULL, NULL, NULL}},
	};
	size_t i;
	for (i = 0; i < LG_COUNTOF(cases); i++) {
		const char *s = cases[i].in;
		size_t n = strlen(s), k;
		const struct ut_sse_want *w = &cases[i].w;
		struct lg_sse_ev ev;
		char *scratch = ut_guard_at(1, "", 0) - n;
		const char *b = ut_guard(s, n);
		k = lg_sse_next(b, n, &ev, scratch);
		ut_case("sse %s: took %zu fields %d ndata %d data %s", UT_ESCZ(s), k, ev.fields, ev.ndata,
		        ut_esc(ev.data.p, ev.data.n));
		ASSERT(k == w->took);
		if (k == 0) continue;
		ASSERT(ev.fields == w->fields && ev.ndata == w->ndata);
		ASSERT(ut_view_is(ev.data, w->data) && ut_view_is(ev.event, w->event) && ut_view_is(ev.id, w->id));
		ASSERT(ev.ndata > 1 ? ev.data.p == scratch : ut_view_in(ev.data, b, n));
	}
}

/* The comment says an event with no field (a comment, a keep-alive) comes
 * back with fields == 0 so the caller can drop it. */
static void t_sse_comment_only(void)
{
	static const char *const cases[] = {": keep-alive\n\n", ":\n\n", ": ping\r\n\r\n", "\n"};
	size_t i;
	for (i = 0; i < LG_COUNTOF(cases); i++) {
		struct lg_sse_ev ev;
		size_t n = strlen(cases[i]);
		char scratch[64];
		size_t k = lg_sse_next(ut_guard(cases[i], n), n, &ev, scratch);
		ut_case("sse %s: took %zu fields %d", UT_ESCZ(cases[i]), k, ev.fields);
		ASSERT(k == n && ev.fields == 0);
	}
}

/* An event arrives cut at every byte: nothing until its end; then the
 * same event. Framings: LF, CRLF, CR (which needs one more byte). */
static void t_sse_split(void)
{
	static const char *const evs[] = {
	    "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
	    "data: {\"a\":1}\r\n\r\n",
	    "event: content_block_delta\r\ndata: {\"x\":\"y\"}\r\nid: 7\r\n\r\n",
	    ": comment\ndata: a\ndata: b\n\n",
	    "data: a\rdata: b\r\r",
	    "data:x\r\n\n",
	};
	size_t i, k;
	for (i = 0; i < LG_COUNTOF(evs); i++) {
		const char *s = evs[i];
		size_t n = strlen(s), took, full;
		struct lg_sse_ev ev, ref;
		char buf[512], scratch[512];
		int cr = s[n - 1] == '\r';
		/* the reference: the whole event and one more byte */
		memcpy(buf, s, n);
		buf[n] = 'x';
		full = lg_sse_next(buf, n + 1, &ref, scratch);
		ut_case("sse %s: took %zu", UT_ESCZ(s), full);
		ASSERT(full == n && ref.fields > 0);
		for (k = 0; k <= n; k++) {
			char *sc = ut_guard_at(1, "", 0) - k;
			const char *b = ut_guard(s, k);
			took = lg_sse_next(b, k, &ev, sc);
			ut_case("sse %s cut to %zu: took %zu", UT_ESCZ(s), k, took);
			if (k < n || cr) {
				ASSERT(took == 0);
			} else {
				ASSERT(took == n && ev.fields == ref.fields && ev.ndata == ref.ndata);
				ASSERT(ev.data.n == ref.data.n && memcmp(ev.data.p, ref.data.p, ev.data.n) == 0);
				ASSERT(ev.event.n == ref.event.n && ev.id.n == ref.id.n);
			}
		}
	}
}

/* A stream of events with mixed framing and comments, fed one byte at a
 * time to a reader that consumes what lg_sse_next returns. */
static void t_sse_stream(void)
{
	static const char stream[] = ": OPENROUTER PROCESSING\n\n"
	                             "data: one\n\n"
	                             "data: two\r\n\r\n"
	                             "event: e3\rdata: three\r\r"
	                             ":ping\n\n"
	                             "data: fo\ndata: ur\n\n"
	                             "data: [DONE]\n\n";
	static const char *const want[] = {"one", "two", "three", "fo\nur", "[DONE]"};
	char buf[512], scratch[512];
	size_t have = 0, i, got = 0;
	for (i = 0; i < sizeof stream - 1; i++) {
		buf[have++] = stream[i];
		for (;;) {
			struct lg_sse_ev ev;
			size_t k = lg_sse_next(buf, have, &ev, scratch);
			if (k == 0) break;
			ut_case("after byte %zu: took %zu fields %d data %s", i, k, ev.fields, ut_esc(ev.data.p, ev.data.n));
			ASSERT(k <= have);
			if (ev.fields && ASSERT(got < LG_COUNTOF(want))) {
				ASSERT(lg_str_eq(ev.data, want[got]));
				if (got == 2) ASSERT(lg_str_eq(ev.event, "e3"));
				got++;
			}
			memmove(buf, buf + k, have - k);
			have -= k;
		}
	}
	ut_case("events seen %zu, bytes left %zu", got, have);
	ASSERT(got == LG_COUNTOF(want) && have == 0);
}

/* ===== sha256 ========================================================== */

static void ut_hex(const unsigned char *d, size_t n, char *out)
{
	size_t i;
	for (i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

static void t_sha256(void)
{
	static const struct {
		const char *in;
		size_t rep; /* the input repeated */
		const char *hex;
	} v[] = {
	    {"", 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	    {"abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	    {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
	     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
	    {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrs"
	     "tnopqrstu",
	     1, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
	    {"a", 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
	    /* lengths around the padding boundary */
	    {"a", 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
	    {"a", 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
	    {"a", 57, "f13b2d724659eb3bf47f2dd6af1accc87b81f09f59f2b75e5c0bed6589dfe8c6"},
	    {"a", 63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
	    {"a", 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
	    {"a", 65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
	    {"a", 119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
	    {"a", 120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
	    {"s3cret", 1, "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"},
	};
	size_t i, r;
	for (i = 0; i < LG_COUNTOF(v); i++) {
		size_t ln = strlen(v[i].in), n = ln * v[i].rep;
		char *buf = (char *)malloc(n + 1), hex[65];
		unsigned char d[32], d2[32];
		struct lg_sha256 st;
		uint64_t seed = i + 1;
		if (!ASSERT(buf != NULL)) return;
		for (r = 0; r < v[i].rep; r++) memcpy(buf + r * ln, v[i].in, ln);
		lg_sha256(ut_guard(buf, n), n, d);
		ut_hex(d, 32, hex);
		ut_case("sha256 of %zu x %s: %s", v[i].rep, UT_ESCZ(v[i].in), hex);
		ASSERT(strcmp(hex, v[i].hex) == 0);
		/* the same in random-sized updates */
		lg_sha256_init(&st);
		for (r = 0; r < n;) {
			size_t k = (size_t)(lg_rand(&seed) % 200);
			if (k > n - r) k = n - r;
			lg_sha256_update(&st, buf + r, k);
			r += k;
		}
		lg_sha256_final(&st, d2);
		ASSERT(memcmp(d, d2, 32) == 0);
		free(buf);
	}
}

static void t_ct_eq(void)
{
	static const unsigned char a[] = "0123456789abcdef", b[] = "0123456789abcdef", c[] = "1123456789abcdef",
	                           e[] = "0123456789abcdeF";
	ASSERT(lg_ct_eq(a, b, 16) == 1);
	ASSERT(lg_ct_eq(a, c, 16) == 0);
	ASSERT(lg_ct_eq(a, e, 16) == 0);
	ASSERT(lg_ct_eq(a, e, 15) == 1);
	ASSERT(lg_ct_eq(a, c, 0) == 1);
}

/* ===== glob ============================================================= */

static void t_glob(void)
{
	static const struct {
		const char *pat, *s;
		int m;
	} v[] = {
	    {"gpt-4o*", "gpt-4o", 1},         {"gpt-4o*", "gpt-4o-mini", 1},   {"gpt-4o*", "gpt-4", 0},
	    {"gpt-4o*", "xgpt-4o", 0},        {"gpt-4o*", "GPT-4o", 0},        {"claude-*", "claude-sonnet-4-5", 1},
	    {"claude-*", "claude-", 1},       {"claude-*", "claude", 0},       {"*", "", 1},
	    {"*", "anything/at all", 1},      {"**", "", 1},                   {"?", "a", 1},
	    {"?", "", 0},                     {"?", "ab", 0},                  {"a?c", "abc", 1},
	    {"a?c", "ac", 0},                 {"*-mini", "gpt-4o-mini", 1},    {"*-mini", "mini", 0},
	    {"a*b*c", "abc", 1},              {"a*b*c", "aXbYc", 1},           {"a*b*c", "abbc", 1},
	    {"a*b*c", "acbc", 1},             {"a*b*c", "acb", 0},             {"", "", 1},
	    {"", "a", 0},                     {"abc", "ab", 0},                {"ab", "abc", 0},
	    {"*a", "aaaa", 1},                {"*a*", "bab", 1},               {"*?", "", 0},
	    {"*?", "x", 1},                   {"openai/*", "openai/gpt-4.1", 1}, {"*/*", "gpt-4o", 0},
	    {"a*", "a", 1},                   {"*aab", "aaaab", 1},            {"*ab*ab", "abxabab", 1},
	};
	size_t i;
	for (i = 0; i < LG_COUNTOF(v); i++) {
		size_t n = strlen(v[i].s);
		ut_case("glob %s %s", UT_ESCZ(v[i].pat), UT_ESCZ(v[i].s));
		ASSERT(lg_glob(v[i].pat, lg_str_of(ut_guard(v[i].s, n), n)) == v[i].m);
	}
	/* the view's length counts, not a NUL */
	ASSERT(lg_glob("gpt-4o", lg_str_of("gpt-4o-mini", 6)) == 1);
	ASSERT(lg_glob("gpt-4o-*", lg_str_of("gpt-4o-mini", 6)) == 0);
}

/* ===== buf ============================================================== */

static void t_buf(void)
{
	struct lg_buf b;
	char big[10000];
	size_t i;
	for (i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 26);
	/* max enforced: never a silent truncation */
	lg_buf_init(&b, 16);
	ASSERT(lg_buf_add(&b, big, 10) == 0 && lg_buf_used(&b) == 10);
	ASSERT(lg_buf_add(&b, big, 6) == 0 && lg_buf_used(&b) == 16 && !b.err);
	ASSERT(lg_buf_add(&b, "x", 1) == -1 && b.err && lg_buf_used(&b) == 16);
	ASSERT(lg_buf_add(&b, "", 0) == -1); /* the error sticks */
	ASSERT(lg_buf_addc(&b, 'y') == -1 && lg_buf_used(&b) == 16);
	ASSERT(memcmp(lg_buf_data(&b), big, 10) == 0 && memcmp(lg_buf_data(&b) + 10, big, 6) == 0);
	lg_buf_free(&b);
	ASSERT(b.err == 0 && b.p == NULL && lg_buf_used(&b) == 0);
	lg_buf_init(&b, 16);
	ASSERT(lg_buf_add(&b, big, 17) == -1 && b.err && lg_buf_used(&b) == 0);
	lg_buf_free(&b);
	/* a max below the first allocation size: the capacity is the max */
	lg_buf_init(&b, 100);
	ASSERT(lg_buf_add(&b, big, 100) == 0 && b.cap == 100 && lg_buf_add(&b, "z", 1) == -1);
	lg_buf_free(&b);
	/* consume, then room is made by moving the data to the front */
	lg_buf_init(&b, 16);
	ASSERT(lg_buf_add(&b, big, 16) == 0);
	lg_buf_consume(&b, 10);
	ASSERT(lg_buf_used(&b) == 6 && memcmp(lg_buf_data(&b), big + 10, 6) == 0);
	ASSERT(lg_buf_add(&b, big, 10) == 0 && lg_buf_used(&b) == 16 && b.off == 0);
	ASSERT(memcmp(lg_buf_data(&b), big + 10, 6) == 0 && memcmp(lg_buf_data(&b) + 6, big, 10) == 0);
	ASSERT(lg_buf_add(&b, "x", 1) == -1);
	lg_buf_free(&b);
	/* unlimited: compaction before growth, growth keeps the bytes */
	{
		size_t q = LG_MIN((size_t)LLMGW_IO_BUF, sizeof big) / 4; /* a quarter of the first allocation */
		lg_buf_init(&b, 0);
		ASSERT(lg_buf_add(&b, big, 3 * q) == 0 && b.cap == LLMGW_IO_BUF);
		lg_buf_consume(&b, 2 * q);
		ASSERT(lg_buf_add(&b, big, 2 * q) == 0 && b.cap == LLMGW_IO_BUF && b.off == 0);
		ASSERT(memcmp(lg_buf_data(&b), big + 2 * q, q) == 0 && memcmp(lg_buf_data(&b) + q, big, 2 * q) == 0);
		ASSERT(lg_buf_add(&b, big, sizeof big) == 0 && lg_buf_used(&b) == 3 * q + sizeof big);
		ASSERT(memcmp(lg_buf_data(&b) + 3 * q, big, sizeof big) == 0);
	}
	lg_buf_consume(&b, lg_buf_used(&b));
	ASSERT(lg_buf_used(&b) == 0 && b.off == 0 && b.len == 0);
	ASSERT(lg_buf_addz(&b, "abc") == 0 && lg_buf_adds(&b, lg_str_of("defg", 2)) == 0 && lg_buf_addc(&b, '!') == 0);
	ASSERT(lg_buf_used(&b) == 6 && memcmp(lg_buf_data(&b), "abcde!", 6) == 0);
	lg_buf_consume(&b, 100); /* more than there is: empty */
	ASSERT(lg_buf_used(&b) == 0);
	ASSERT(lg_buf_printf(&b, "%d-%s-%zu", 42, "x", (size_t)7) == 0 && lg_buf_used(&b) == 6 &&
	       memcmp(lg_buf_data(&b), "42-x-7", 6) == 0);
	lg_buf_free(&b);
	lg_buf_init(&b, 0);
	lg_buf_add(&b, big, sizeof big);
	lg_buf_consume(&b, sizeof big);
	lg_buf_shrink(&b); /* a big empty buffer gives its memory back */
	ASSERT(b.p == NULL && b.cap == 0);
	lg_buf_free(&b);
	/* printf: past the max is an error */
	lg_buf_init(&b, 8);
	ASSERT(lg_buf_printf(&b, "%s", "123456789") == -1 && b.err && lg_buf_used(&b) == 0);
	lg_buf_free(&b);
	lg_buf_init(&b, 8);
	ASSERT(lg_buf_printf(&b, "%s", "1234567") == 0 && lg_buf_used(&b) == 7);
	lg_buf_free(&b);
}

/* Writing exactly up to the maximum is not writing past it: printf must
 * behave like add (it reserves one more byte for vsnprintf's NUL). */
static void t_buf_printf_at_max(void)
{
	struct lg_buf b;
	lg_buf_init(&b, 8);
	ut_case("lg_buf_printf of 8 bytes into a buffer with max 8");
	ASSERT(lg_buf_printf(&b, "%s", "12345678") == 0 && lg_buf_used(&b) == 8 && !b.err);
	lg_buf_free(&b);
	lg_buf_init(&b, 8);
	ASSERT(lg_buf_add(&b, "1234", 4) == 0);
	ut_case("lg_buf_printf of 4 more bytes into a buffer with max 8 holding 4");
	ASSERT(lg_buf_printf(&b, "%d", 5678) == 0 && lg_buf_used(&b) == 8 && !b.err);
	lg_buf_free(&b);
}

static void t_arena(void)
{
	struct lg_arena a = {NULL};
	size_t i;
	for (i = 0; i < 2000; i++) {
		size_t n = i * 7 % 300 + (i == 1000 ? 20000 : 0);
		unsigned char *p = (unsigned char *)lg_arena_alloc(&a, n);
		size_t k, zero = 1;
		if (!ASSERT(p != NULL)) break;
		ASSERT(((uintptr_t)p & (sizeof(void *) >= 8 ? 15 : 7)) == 0); /* malloc's alignment on 32-bit targets is 8 */
		for (k = 0; k < n; k++) zero &= p[k] == 0;
		ASSERT(zero);
		memset(p, 0xAB, n);
	}
	{
		char *s = lg_arena_strn(&a, "hello world", 5);
		ASSERT(s && strcmp(s, "hello") == 0);
	}
	lg_arena_free(&a);
	ASSERT(a.head == NULL);
}

/* ===== util: durations, tokens, views ================================== */

static void t_duration(void)
{
	static const struct {
		const char *v;
		int ok;
		int64_t ms;
	} v[] = {
	    {"500ms", 1, 500}, {"10s", 1, 10000},    {"10", 1, 10000},     {"2m", 1, 120000},  {"1h", 1, 3600000},
	    {"1d", 1, 86400000}, {"1.5s", 1, 1500}, {"0", 1, 0},          {"0ms", 1, 0},      {"10 s", 1, 10000},
	    {"0.5", 1, 500},    {".5s", 1, 500},    {"", 0, 0},           {"s", 0, 0},        {"-1s", 0, 0},
	    {"10x", 0, 0},      {"10S", 0, 0},      {"10sec", 0, 0},      {"1e400", 0, 0},    {"inf", 0, 0},
	    {"nan", 0, 0},      {"999999999999d", 0, 0}, {" 10s", 0, 0},  {"10 ms x", 0, 0},  {"1m30s", 0, 0},
	};
	size_t i;
	for (i = 0; i < LG_COUNTOF(v); i++) {
		int64_t ms = -42;
		size_t n = strlen(v[i].v);
		int r = lg_cfg_duration_of(lg_str_of(ut_guard(v[i].v, n), n), &ms);
		ut_case("duration %s: %d %lld", UT_ESCZ(v[i].v), r, (long long)ms);
		ASSERT(r == (v[i].ok ? 0 : -1));
		if (v[i].ok) ASSERT(ms == v[i].ms);
	}
}

static void t_has_token(void)
{
	static const struct {
		const char *list, *tok;
		int m;
	} v[] = {
	    {"close", "close", 1},          {"keep-alive, close", "close", 1}, {"Keep-Alive , CLOSE ", "close", 1},
	    {"keep-alive,close", "keep-alive", 1}, {"closed", "close", 0},     {"", "close", 0},
	    {",,close,,", "close", 1},      {"clo se", "close", 0},            {"upgrade", "close", 0},
	    {"\tclose\t", "close", 1},      {"a, b, c", "b", 1},               {"a, b, c", "d", 0},
	};
	size_t i;
	for (i = 0; i < LG_COUNTOF(v); i++) {
		size_t n = strlen(v[i].list);
		ut_case("has_token %s %s", UT_ESCZ(v[i].list), v[i].tok);
		ASSERT(lg_str_has_token(lg_str_of(ut_guard(v[i].list, n), n), v[i].tok) == v[i].m);
	}
	/* an empty view that points somewhere (NULL + 0 would be undefined) */
	ASSERT(lg_str_has_token(lg_str_of("x", 0), "close") == 0);
}

static void t_str(void)
{
	lg_str t = lg_str_trim(lg_str_of(" \t a b \t\r", 9));
	ASSERT(t.n == 3 && memcmp(t.p, "a b", 3) == 0);
	ASSERT(lg_str_trim(lg_str_of("  ", 2)).n == 0);
	ASSERT(lg_str_eq(lg_str_of("abc", 3), "abc") && !lg_str_eq(lg_str_of("abc", 2), "abc"));
	ASSERT(lg_str_ieq(lg_str_of("Content-LENGTH", 14), "content-length"));
	ASSERT(!lg_str_ieq(lg_str_of("Content-Lengthx", 15), "content-length"));
	ASSERT(lg_hexval('0') == 0 && lg_hexval('9') == 9 && lg_hexval('a') == 10 && lg_hexval('F') == 15);
	ASSERT(lg_hexval('g') == -1 && lg_hexval('/') == -1 && lg_hexval(':') == -1 && lg_hexval('@') == -1);
	ASSERT(lg_memmem("hello world", 11, "o w") && !lg_memmem("hello", 5, "hello!") && lg_memmem("abc", 3, "abc"));
	ASSERT(!lg_memmem("hello", 3, "llo"));
}

/* ===== runner =========================================================== */

/* A listening socket on 127.0.0.1 (port 0 = any); its port in *port. */
static int ut_listen_any(int *port)
{
	struct sockaddr_in a;
	socklen_t al = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0) return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
		close(fd);
		return -1;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

/* A host name with two addresses whose first refuses connections: the
 * upstream connect moves on to the second, and the name's next connects
 * start there. The name's DNS entry is put in the cache by hand (the test
 * must not depend on the machine's resolver). */
static void t_net_dns_next_address(void)
{
	struct llmgw *gw = llmgw_new();
	char cfg[1024], err[512] = "";
	int up_port = 0, dead_port = 0, gw_port = 0, ufd, dfd, gfd, cfd = -1, afd = -1, i, which = -1, r;
	struct sockaddr_storage sa;
	socklen_t alen;
	const char *why = "";
	struct lg_dns_ent *e;
	static const char req[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
	                          "Content-Length: 56\r\n\r\n{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
	ufd = ut_listen_any(&up_port);
	dfd = ut_listen_any(&dead_port);
	gfd = ut_listen_any(&gw_port);
	ASSERT(ufd >= 0 && dfd >= 0 && gfd >= 0 && gw);
	if (ufd < 0 || dfd < 0 || gfd < 0 || !gw) return;
	close(dfd); /* nothing listens there now: connects are refused */
	close(gfd); /* the gateway listens there */
	snprintf(cfg, sizeof cfg,
	         "[gateway]\nlisten = 127.0.0.1:%d\nauth = none\nlog_level = error\nconnect_timeout = 2s\n"
	         "[provider.up]\ntype = openai\nbase_url = http://multi.test:%d/v1\napi_key = k\n"
	         "[model.m]\ntarget = up m\n",
	         gw_port, up_port);
	r = llmgw_load_string(gw, cfg, "dns-test", err, sizeof err);
	ut_case("config: %s", err);
	ASSERT(r == 0);
	ASSERT(r == 0 && llmgw_start(gw, err, sizeof err) == 0);
	/* the resolver starts with any name; then the entry, as if resolved */
	lg_dns_lookup(gw, "localhost", 1, -1, &sa, &alen, &which, &why);
	ASSERT(gw->dns != NULL);
	if (r != 0 || !gw->dns) goto out;
	e = (struct lg_dns_ent *)calloc(1, sizeof *e);
	ASSERT(e != NULL);
	if (!e) goto out;
	snprintf(e->host, sizeof e->host, "multi.test");
	e->port = up_port;
	e->state = LG_DNS_OK;
	e->naddr = 2;
	e->expires = lg_now_ms() + 3600000;
	for (i = 0; i < 2; i++) {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&e->addr[i];
		a4->sin_family = AF_INET;
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a4->sin_port = htons((uint16_t)(i == 0 ? dead_port : up_port));
		e->alen[i] = sizeof *a4;
	}
	pthread_mutex_lock(&gw->dns->mu);
	e->next = gw->dns->ents;
	gw->dns->ents = e;
	pthread_mutex_unlock(&gw->dns->mu);
	{ /* a client asks; the gateway connects upstream */
		struct sockaddr_in g;
		int64_t until = lg_now_ms() + 5000;
		memset(&g, 0, sizeof g);
		g.sin_family = AF_INET;
		g.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		g.sin_port = htons((uint16_t)gw_port);
		cfd = socket(AF_INET, SOCK_STREAM, 0);
		ASSERT(cfd >= 0 && connect(cfd, (struct sockaddr *)&g, sizeof g) == 0);
		ASSERT(cfd >= 0 && send(cfd, req, sizeof req - 1, 0) == (ssize_t)(sizeof req - 1));
		lg_set_nonblock(ufd);
		while (afd < 0 && lg_now_ms() < until) {
			llmgw_poll(gw, 10);
			afd = accept(ufd, NULL, NULL);
		}
	}
	ASSERT(afd >= 0); /* the second address was tried and reached */
	{ /* the request arrives there: the gateway saw the connection up */
		char b[256];
		int64_t until = lg_now_ms() + 5000;
		long got = -1;
		if (afd >= 0) lg_set_nonblock(afd);
		while (afd >= 0 && got <= 0 && lg_now_ms() < until) {
			llmgw_poll(gw, 10);
			got = (long)recv(afd, b, sizeof b, 0);
		}
		ASSERT(got > 0);
	}
	pthread_mutex_lock(&gw->dns->mu);
	ASSERT(e->pref == 1); /* and is where the next connect starts */
	pthread_mutex_unlock(&gw->dns->mu);
	/* the preferred address (want < 0) is now the second; an absolute number still reaches any */
	ASSERT(lg_dns_lookup(gw, "multi.test", up_port, -1, &sa, &alen, &which, &why) == 2 && which == 1);
	ASSERT(((struct sockaddr_in *)&sa)->sin_port == htons((uint16_t)up_port));
	ASSERT(lg_dns_lookup(gw, "multi.test", up_port, 2, &sa, &alen, &which, &why) == 2 && which == 0);
	ASSERT(((struct sockaddr_in *)&sa)->sin_port == htons((uint16_t)dead_port));
out:
	if (afd >= 0) close(afd);
	if (cfd >= 0) close(cfd);
	close(ufd);
	llmgw_stop(gw);
	for (i = 0; i < 100 && llmgw_poll(gw, 10) > 0; i++) {
	}
	llmgw_free(gw);
}

/* With several loops on one access log, a batch goes out in writes of
 * whole lines of at most LG_PIPE_BUF bytes (what a pipe writes without
 * interleaving); a line longer than that goes alone. A SOCK_SEQPACKET pair
 * shows every write() as one record. */
static void t_net_access_log_pieces(void)
{
	struct llmgw *gw = llmgw_new();
	struct lg_shared fake;
	int sv[2], i, nrec = 0, nlines = 0, bad = 0;
	char rec[8 * LG_PIPE_BUF];
	ASSERT(gw && socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
	if (!gw) return;
	memset(&fake, 0, sizeof fake);
	gw->logfd = sv[0];
	gw->sh = &fake; /* only looked at as "several loops" here */
	for (i = 0; i < 100; i++) { /* 100 lines of 50..150 bytes, and one of 2 * LG_PIPE_BUF */
		int len = i == 50 ? 2 * LG_PIPE_BUF : 50 + i, k;
		for (k = 0; k < len - 1; k++) lg_buf_addc(&gw->logbuf, (char)('a' + (i + k) % 26));
		lg_buf_addc(&gw->logbuf, '\n');
	}
	lg_acct_flush(gw);
	gw->sh = NULL;
	gw->logfd = -1;
	close(sv[0]);
	for (;;) {
		ssize_t n = recv(sv[1], rec, sizeof rec, 0);
		int lines = 0;
		if (n <= 0) break;
		nrec++;
		for (i = 0; i < n; i++) lines += rec[i] == '\n';
		nlines += lines;
		if (rec[n - 1] != '\n' || (n > (ssize_t)LG_PIPE_BUF && lines != 1)) bad++;
	}
	close(sv[1]);
	ut_case("%d records, %d lines", nrec, nlines);
	ASSERT(nlines == 100 && bad == 0);
	ASSERT(nrec >= 4); /* 14 KB of lines: several writes */
	llmgw_free(gw);
}

/* issue 14.6: the state store's calls may answer later. A store that
 * answers admit and view from a timer 30 ms on (as one across the network
 * would) serves a chat completion, /v1/key and /v1/generation exactly as
 * the in-process one; a client that leaves while its request waits for
 * the store gets the wait cancelled (no answer runs on a finished
 * request: ASan would see it). */
static struct {
	struct lg_timer tm;
	struct lg_req *r;
	void (*fn)(struct lg_req *r); /* a view, or NULL: admit */
	int admits, views, cancels, late;
} ut_st;

static void ut_st_fire(struct llmgw *gw, struct lg_timer *t)
{
	struct lg_req *r = ut_st.r;
	LG_UNUSED(t);
	LG_UNUSED(gw);
	ut_st.r = NULL;
	if (!r) return;
	ut_st.late += r->st_wait == 2; /* the request saw that the answer comes later */
	if (ut_st.fn)
		lg_st_local.view(r, ut_st.fn);
	else
		lg_st_local.admit(r);
}

static void ut_st_later(struct lg_req *r, void (*fn)(struct lg_req *r))
{
	ut_st.r = r;
	ut_st.fn = fn;
	ut_st.tm.fn = ut_st_fire;
	lg_timer_set(r->gw, &ut_st.tm, 30);
}

static void ut_st_admit(struct lg_req *r)
{
	ut_st.admits++;
	ut_st_later(r, NULL);
}

static void ut_st_view(struct lg_req *r, void (*fn)(struct lg_req *r))
{
	ut_st.views++;
	ut_st_later(r, fn);
}

static void ut_st_cancel(struct lg_req *r)
{
	ut_st.cancels++;
	if (ut_st.r == r) {
		ut_st.r = NULL;
		lg_timer_clear(r->gw, &ut_st.tm);
	}
}

/* sends req to 127.0.0.1:port and runs the loop until the answer is
 * complete (the server closes: Connection: close) or 3 s pass */
static int ut_gw_exchange(struct llmgw *gw, int port, const char *req, char *out, size_t cap, int hangup)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM, 0), i;
	size_t got = 0;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	out[0] = 0;
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0 || write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		if (fd >= 0) close(fd);
		return -1;
	}
	lg_set_nonblock(fd);
	for (i = 0; i < 300; i++) {
		ssize_t n;
		llmgw_poll(gw, 10);
		if (hangup && i == 2) break; /* leave while the store answers */
		n = read(fd, out + got, cap - 1 - got);
		if (n > 0) got += (size_t)n;
		out[got] = 0;
		if (n == 0) break;
	}
	close(fd);
	for (i = 0; i < 10; i++) llmgw_poll(gw, 5);
	return (int)got;
}

static void t_sha1(void)
{
	static const struct {
		const char *in;
		size_t rep;
		const char *hex;
	} v[] = {
	    {"", 1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
	    {"abc", 1, "a9993e364706816aba3e25717850c26c9cd0d89d"},
	    {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1, "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
	    {"a", 1000000, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"},
	    {"a", 55, "c1c8bbdc22796e28c0e15163d20899b65621d65a"},
	    {"a", 56, "c2db330f6083854c99d4b5bfb6e8f29f201be699"},
	    {"a", 64, "0098ba824b5c16427bd7a1122a5a442a25ec644d"},
	};
	size_t i, r, k;
	for (i = 0; i < LG_COUNTOF(v); i++) {
		size_t ln = strlen(v[i].in), n = ln * v[i].rep;
		char *buf = (char *)malloc(n + 1), hex[41];
		unsigned char d[20];
		for (r = 0; r < v[i].rep; r++) memcpy(buf + r * ln, v[i].in, ln);
		lg_sha1(buf, n, d);
		for (k = 0; k < 20; k++) snprintf(hex + 2 * k, 3, "%02x", d[k]);
		ut_case("sha1 of %zu x '%s'", v[i].rep, v[i].in);
		ASSERT(strcmp(hex, v[i].hex) == 0);
		free(buf);
	}
}

/* RESP2 replies: each case whole, every strict prefix "need more" (bytes
 * placed against a guard page), a stream of all of them split at every
 * chunk size, and what must be refused. */
static void t_redis_parse(void)
{
	static const struct {
		const char *in;
		int nv;
		const char *types; /* one letter per value: s e i b n a */
	} ok[] = {
	    {"+OK\r\n", 1, "s"},
	    {"-NOSCRIPT No matching script\r\n", 1, "e"},
	    {":42\r\n", 1, "i"},
	    {":-7\r\n", 1, "i"},
	    {"$5\r\nhe\r\no\r\n", 1, "b"},
	    {"$0\r\n\r\n", 1, "b"},
	    {"$-1\r\n", 1, "n"},
	    {"*-1\r\n", 1, "n"},
	    {"*0\r\n", 1, "a"},
	    {"*4\r\n:1\r\n*2\r\n$1\r\na\r\n-E x\r\n$-1\r\n+s\r\n", 7, "aiabens"},
	    {"*2\r\n*1\r\n*1\r\n:5\r\n:6\r\n", 5, "aaaii"},
	};
	static const char tl[] = "seibna"; /* LG_RV_STR .. LG_RV_ARR */
	struct lg_rv v[LG_RV_MAX];
	char stream[1024];
	size_t i, k, sl = 0;
	int nv;
	for (i = 0; i < LG_COUNTOF(ok); i++) {
		size_t n = strlen(ok[i].in);
		int j;
		char *g = tl_guard_at(0, ok[i].in, n);
		ut_case("reply %zu: %s", i, ok[i].in);
		ASSERT(lg_redis_parse(g, n, v, LG_RV_MAX, &nv, 64) == (long)n);
		ASSERT(nv == ok[i].nv);
		for (j = 0; j < nv && j < ok[i].nv; j++) {
			int want = (int)(strchr(tl, ok[i].types[j]) - tl) + 1;
			ASSERT(v[j].type == want);
		}
		for (k = 0; k < n; k++) {
			g = tl_guard_at(0, ok[i].in, k);
			ut_case("reply %zu, prefix of %zu bytes", i, k);
			ASSERT(lg_redis_parse(g, k, v, LG_RV_MAX, &nv, 64) == 0);
		}
		memcpy(stream + sl, ok[i].in, n);
		sl += n;
	}
	/* the nested case: values and where each ends */
	ASSERT(lg_redis_parse(ok[9].in, strlen(ok[9].in), v, LG_RV_MAX, &nv, 64) > 0);
	ASSERT(v[0].n == 4 && v[0].next == 7 && v[1].i == 1 && v[2].n == 2 && v[2].next == 5);
	ASSERT(v[3].len == 1 && v[3].p[0] == 'a' && v[4].len == 3 && memcmp(v[4].p, "E x", 3) == 0);
	ASSERT(v[5].type == LG_RV_NIL && v[6].type == LG_RV_STR);
	ASSERT(lg_redis_parse(ok[4].in, strlen(ok[4].in), v, LG_RV_MAX, &nv, 64) > 0 && v[0].len == 5 &&
	       memcmp(v[0].p, "he\r\no", 5) == 0);
	ASSERT(lg_redis_parse(ok[3].in, strlen(ok[3].in), v, LG_RV_MAX, &nv, 64) > 0 && v[0].i == -7);
	/* the stream in chunks of every size: the same replies in the same order */
	for (k = 1; k <= sl; k++) {
		char acc[1024];
		size_t have = 0, fed = 0, got = 0;
		int bad = 0;
		while (fed < sl || have) {
			long u;
			size_t step = LG_MIN(k, sl - fed);
			memcpy(acc + have, stream + fed, step);
			have += step, fed += step;
			while (have && (u = lg_redis_parse(acc, have, v, LG_RV_MAX, &nv, 64)) != 0) {
				if (u < 0 || got >= LG_COUNTOF(ok) || nv != ok[got].nv) {
					bad = 1;
					break;
				}
				got++;
				memmove(acc, acc + u, have - (size_t)u);
				have -= (size_t)u;
			}
			if (bad || (fed == sl && have)) break;
		}
		ut_case("stream in chunks of %zu", k);
		ASSERT(!bad && got == LG_COUNTOF(ok));
	}
	/* two replies in one buffer: only the first is taken */
	ASSERT(lg_redis_parse("+A\r\n:1\r\n", 8, v, LG_RV_MAX, &nv, 64) == 4);
	{
		static const char *const bad[] = {"?x\r\n", ":12a\r\n", ":\r\n", "$3\r\nabcXY", "+OK\rX", "$-2\r\n",
		                                  "*-2\r\n", "$65\r\n", "*65\r\n", "\r\n", "$1x\r\n",
		                                  "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"};
		char big[200];
		for (i = 0; i < LG_COUNTOF(bad); i++) {
			char *g = tl_guard_at(0, bad[i], strlen(bad[i]));
			ut_case("refused: %s", bad[i]);
			ASSERT(lg_redis_parse(g, strlen(bad[i]), v, LG_RV_MAX, &nv, 64) == -1);
		}
		/* a status line without its end: need more up to the limit, then refused */
		memset(big, 'a', sizeof big);
		big[0] = '+';
		ASSERT(lg_redis_parse(big, 90, v, LG_RV_MAX, &nv, 64) == 0);
		ASSERT(lg_redis_parse(big, sizeof big, v, LG_RV_MAX, &nv, 64) == -1);
		/* more values than the caller's array: refused, not overrun */
		ASSERT(lg_redis_parse("*3\r\n:1\r\n:2\r\n:3\r\n", 16, v, 3, &nv, 64) == -1);
		ASSERT(lg_redis_parse("*2\r\n:1\r\n:2\r\n", 12, v, 3, &nv, 64) == 12);
	}
}

static void t_store_later(void)
{
	struct llmgw *gw = llmgw_new();
	static const struct lg_store later = {"later", ut_st_admit, NULL, NULL, NULL, NULL, NULL, ut_st_view, ut_st_cancel};
	static struct lg_store st;
	char cfg[1024], err[512] = "", out[8192], req[1024], id[64] = "";
	const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hello store\"}]}";
	const char *p;
	int port = 0, fd = ut_listen_any(&port), r;
	ASSERT(gw && fd >= 0);
	if (!gw || fd < 0) return;
	close(fd);
	st = later; /* admit and view answer later; the rest is the in-process store's */
	st.take = lg_st_local.take;
	st.report = lg_st_local.report;
	st.remember = lg_st_local.remember;
	st.charge = lg_st_local.charge;
	st.settle = lg_st_local.settle;
	gw->st = &st;
	memset(&ut_st, 0, sizeof ut_st);
	ut_st.tm.hidx = -1;
	snprintf(cfg, sizeof cfg,
	         "[gateway]\nlisten = 127.0.0.1:%d\nlog_level = error\naccess_log =\n"
	         "[provider.mock]\ntype = mock\n[model.m]\ntarget = mock m in=1 out=2\n"
	         "[key.k]\nsecret = sk-store-later\nbudget = 5/month\nrpm = 100\n",
	         port);
	r = llmgw_load_string(gw, cfg, "store-test", err, sizeof err);
	ut_case("config: %s", err);
	ASSERT(r == 0 && llmgw_start(gw, err, sizeof err) == 0);
	if (r) goto out;
	snprintf(req, sizeof req,
	         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-store-later\r\n"
	         "Connection: close\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
	         strlen(body), body);
	ut_gw_exchange(gw, port, req, out, sizeof out, 0);
	ut_case("chat through a store that answers later: %.300s", out);
	ASSERT(strncmp(out, "HTTP/1.1 200", 12) == 0);
	ASSERT(strstr(out, "\"chat.completion\"") != NULL && strstr(out, "\"cost\"") != NULL);
	ASSERT(ut_st.admits == 1 && ut_st.late == 1);
	if ((p = strstr(out, "x-request-id: "))) sscanf(p + 14, "%63[^\r]", id);
	ASSERT(id[0] != 0);
	/* /v1/key: spend settled, read through a later view */
	ut_gw_exchange(gw, port,
	               "GET /v1/key HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-store-later\r\nConnection: close\r\n\r\n",
	               out, sizeof out, 0);
	ut_case("/v1/key: %.300s", out);
	ASSERT(strncmp(out, "HTTP/1.1 200", 12) == 0 && strstr(out, "\"k\"") != NULL);
	ASSERT(ut_st.views == 1 && ut_st.late == 2);
	snprintf(req, sizeof req,
	         "GET /v1/generation?id=%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-store-later\r\n"
	         "Connection: close\r\n\r\n", id);
	ut_gw_exchange(gw, port, req, out, sizeof out, 0);
	ut_case("/v1/generation: %.300s", out);
	ASSERT(strncmp(out, "HTTP/1.1 200", 12) == 0 && strstr(out, id) != NULL);
	ASSERT(ut_st.views == 2 && ut_st.late == 3);
	/* the client leaves while admit waits: cancelled, and nothing answers it */
	snprintf(req, sizeof req,
	         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-store-later\r\n"
	         "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
	         strlen(body), body);
	ut_gw_exchange(gw, port, req, out, sizeof out, 1);
	ut_case("hang-up while the store answers: admits %d cancels %d", ut_st.admits, ut_st.cancels);
	ASSERT(ut_st.admits == 2 && ut_st.cancels == 1 && ut_st.r == NULL && ut_st.late == 3);
out:
	gw->st = &lg_st_local;
	llmgw_free(gw);
}

/* issue 17.13: what llmgw writes as JSON is well-formed UTF-8, each
 * ill-formed subpart (Unicode 3.9) one U+FFFD, valid text untouched. */
static void t_utf8_replace(void)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"abc", "\"abc\""},
	    {"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\""},
	    {"a\xff" "b", "\"a\xef\xbf\xbd" "b\""},
	    {"\xff\xfe", "\"\xef\xbf\xbd\xef\xbf\xbd\""},
	    {"\xc0\xaf", "\"\xef\xbf\xbd\xef\xbf\xbd\""},          /* overlong: two */
	    {"x\xe2\x82", "\"x\xef\xbf\xbd\""},                     /* cut short: one */
	    {"\xe2\x82z", "\"\xef\xbf\xbdz\""},
	    {"\x80", "\"\xef\xbf\xbd\""},                           /* a lone continuation byte */
	    {"\xed\xa0\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""}, /* a surrogate */
	    {"\xf4\x90\x80\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""}, /* past U+10FFFF */
	    {"\xf0\x9f\x98", "\"\xef\xbf\xbd\""},
	    {"q\"\xff\n", "\"q\\\"\xef\xbf\xbd\\n\""},
	};
	size_t i;
	for (i = 0; i < LG_COUNTOF(cases); i++) {
		struct lg_buf b, f;
		lg_str fx;
		size_t n = strlen(cases[i].in);
		char *in = ut_guard_at(0, cases[i].in, n); /* against the guard page: no read past the end */
		lg_buf_init(&b, 0);
		ut_case("wstr %s", ut_esc(cases[i].in, n));
		ASSERT(lg_json_wstr(&b, in, n) == 0);
		ASSERT(b.len == strlen(cases[i].out) && memcmp(b.p, cases[i].out, b.len) == 0);
		ASSERT(lg_utf8_valid(b.p, b.len));
		ASSERT(lg_utf8_valid(in, n) == (strstr(cases[i].out, "\xef\xbf\xbd") == NULL));
		fx = lg_utf8_fix(&f, lg_str_of(in, n)); /* the same replacement for escaped text (lg_ev) */
		ASSERT(lg_utf8_valid(fx.p, fx.n));
		lg_buf_free(&f);
		lg_buf_free(&b);
	}
}

/* issue 17.6: provider secrets, a prefix of one and masked credentials
 * never pass on from upstream text. */
static void t_scrub_secrets(void)
{
	static const char ini[] = "[provider.p]\ntype = openai\nbase_url = http://127.0.0.1:1/v1\n"
	                          "api_key = sk-TESTSECRET-1234567890abcdef\n[model.m]\ntarget = p x\n"
	                          "[key.k]\nsecret = s\n";
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"Incorrect API key provided: sk-TESTSECRET-1234567890abcdef. You can find",
	     "Incorrect API key provided: [redacted] You can find"},
	    {"{\"error\":{\"message\":\"key sk-TESTSECRET-1234567890abcdef is bad\"}}",
	     "{\"error\":{\"message\":\"key [redacted] is bad\"}}"},
	    {"bad key sk-te****cdef here", "bad key [redacted] here"},
	    {"cut: sk-TESTSECRET-1234...", "cut: [redacted]"},
	    {"nothing to hide", NULL},
	    {"sk-TESTSECRET", NULL}, /* shorter than 16: not the key */
	};
	char err[512];
	struct lg_cfg *c = ut_cfg(ini, sizeof ini - 1, err, sizeof err);
	size_t i;
	if (!ASSERT(c != NULL)) return;
	for (i = 0; i < LG_COUNTOF(cases); i++) {
		struct lg_buf o;
		char z[200];
		int hit = lg_scrub(c, cases[i].in, strlen(cases[i].in), &o);
		ut_case("scrub %s", cases[i].in);
		ASSERT(hit == (cases[i].out != NULL));
		if (hit) {
			ASSERT(o.len == strlen(cases[i].out) && memcmp(o.p, cases[i].out, o.len) == 0);
			lg_buf_free(&o);
		}
		lg_scrub_cpy(c, z, sizeof z, cases[i].in, strlen(cases[i].in));
		ASSERT(strcmp(z, cases[i].out ? cases[i].out : cases[i].in) == 0);
	}
	lg_cfg_free(c);
}

/* issue 17.9: a BOM is skipped, duplicate checks stay linear (30,000
 * sections), a NUL in a value is refused. */
static void t_ini_bom_nul_many(void)
{
	static const char bom[] = "\xef\xbb\xbf[key.k]\nsecret = s\n";
	static const char nul[] = "[key.k]\nsecret = a\0sk-real\n";
	char err[512];
	struct lg_cfg *c = ut_cfg(bom, sizeof bom - 1, err, sizeof err);
	struct lg_buf b;
	int i;
	ut_case("bom: %s", err);
	ASSERT(c != NULL && c->nkeys == 1);
	lg_cfg_free(c);
	c = ut_cfg(nul, sizeof nul - 1, err, sizeof err);
	ut_case("nul: %s", err);
	ASSERT(c == NULL && strstr(err, "ut.ini:2: a NUL byte") != NULL);
	lg_buf_init(&b, 0);
	for (i = 0; i < 30000; i++) lg_buf_printf(&b, "[key.k%d]\nsecret = s%d\n", i, i);
	lg_buf_printf(&b, "[key.k17]\nsecret = again\n");
	c = ut_cfg(b.p, b.len, err, sizeof err);
	ut_case("30001 sections: %s", err);
	ASSERT(c == NULL && strstr(err, "ut.ini:60001: key k17 is defined twice (first on line 35)") != NULL);
	lg_buf_free(&b);
}

static const struct {
	const char *group, *name;
	void (*fn)(void);
} ut_tests[] = {
    {"json", "valid", t_json_valid},
    {"json", "depth", t_json_depth},
    {"json", "token_limit", t_json_token_limit},
    {"json", "tokens_and_accessors", t_json_tokens},
    {"json", "invalid", t_json_invalid},
    {"jsonw", "unescape", t_jsonw_unescape},
    {"jsonw", "write", t_jsonw_write},
    {"jsonw", "roundtrip", t_jsonw_roundtrip},
    {"jsonw", "fmt_g", t_jsonw_fmt_g},
    {"jsonw", "wz_null", t_jsonw_wz_null},
    {"ini", "reader", t_ini_reader},
    {"ini", "full_config", t_ini_full},
    {"ini", "defaults", t_ini_defaults},
    {"ini", "values", t_ini_values},
    {"ini", "errors", t_ini_errors},
    {"ini", "auth_none_error_names_a_line", t_ini_auth_none_line},
    {"ini", "duplicate_model_error_line", t_ini_duplicate_model_line},
    {"ini", "secret_not_echoed", t_ini_secret_not_echoed},
    {"ini", "proxy_port_overflow", t_ini_proxy_port_overflow},
    {"ini", "proxy_scheme", t_ini_proxy_scheme},
    {"ini", "target_number_overflow", t_ini_target_long_overflow},
    {"ini", "load", t_ini_load},
    {"ini", "mutations", t_ini_mutations},
    {"url", "base_url", t_url},
    {"url", "ipv6_host_then_garbage", t_url_ipv6_trailing},
    {"http", "request_valid", t_http_req_valid},
    {"http", "head_end_leading_blank_lines", t_http_head_end_leading_blank_lines},
    {"http", "many_headers", t_http_many_headers},
    {"http", "request_invalid", t_http_req_invalid},
    {"http", "request_early_reject", t_http_req_early_reject},
    {"http", "response", t_http_resp},
    {"framing", "framing", t_framing},
    {"framing", "close_wins_over_keep_alive", t_framing_close_wins},
    {"framing", "empty_content_length", t_framing_empty_clen},
    {"chunked", "valid", t_chunked_valid},
    {"chunked", "invalid", t_chunked_invalid},
    {"sse", "basic", t_sse_basic},
    {"sse", "comment_only_event", t_sse_comment_only},
    {"sse", "split", t_sse_split},
    {"sse", "stream", t_sse_stream},
    {"sha256", "vectors", t_sha256},
    {"sha256", "ct_eq", t_ct_eq},
    {"sha256", "sha1", t_sha1},
    {"net", "redis_parse", t_redis_parse},
    {"glob", "glob", t_glob},
    {"buf", "buf", t_buf},
    {"buf", "printf_at_max", t_buf_printf_at_max},
    {"buf", "arena", t_arena},
    {"util", "duration", t_duration},
    {"util", "has_token", t_has_token},
    {"util", "str", t_str},
    {"net", "dns_next_address", t_net_dns_next_address},
    {"net", "access_log_pieces", t_net_access_log_pieces},
    {"net", "store_later", t_store_later},
    {"harden", "utf8_replace", t_utf8_replace},
    {"harden", "scrub_secrets", t_scrub_secrets},
    {"harden", "ini_bom_nul_many", t_ini_bom_nul_many},
};

/* Runs one test in a child process, so a crash (a guard page hit, an ASan
 * or UBSan abort, a leak found at exit) fails that test and the others
 * still run. -n runs tests in the runner itself (for a debugger). */
static int ut_nofork;

static void ut_run(void (*fn)(void), int *nchecks, int *nfail)
{
	int fds[2], st = 0, got[2] = {0, 0};
	pid_t pid;
	ut_nfail = 0;
	ut_ctx[0] = 0;
	if (ut_nofork || pipe(fds) != 0) {
		int before = ut_nchecks;
		ut_nchecks = 0;
		fn();
		*nchecks = ut_nchecks, *nfail = ut_nfail;
		ut_nchecks = before;
		return;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		close(fds[0]);
		ut_nchecks = 0;
		fn();
		got[0] = ut_nchecks, got[1] = ut_nfail;
		if (write(fds[1], got, sizeof got) != (ssize_t)sizeof got) _exit(3);
		fflush(stdout);
		exit(0); /* not _exit: LeakSanitizer checks at exit */
	}
	close(fds[1]);
	if (pid < 0 || read(fds[0], got, sizeof got) != (ssize_t)sizeof got) got[0] = 0, got[1] = 0, st = -1;
	close(fds[0]);
	if (pid > 0) waitpid(pid, &st, 0);
	*nchecks = got[0], *nfail = got[1];
	if (st != 0) {
		if (WIFSIGNALED(st))
			printf("%s: crashed (signal %d)\n", ut_name, WTERMSIG(st));
		else
			printf("%s: the test process exited with status %d (a sanitizer report above?)\n", ut_name,
			       WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		if (*nfail == 0) *nfail = 1;
	}
}

int main(int argc, char **argv)
{
	int passed = 0, failed = 0, a, ngroups = 0;
	size_t i;
	for (a = 1; a < argc; a++) {
		int known = 0;
		if (strcmp(argv[a], "-l") == 0 || strcmp(argv[a], "--list") == 0) {
			for (i = 0; i < LG_COUNTOF(ut_tests); i++) printf("%s/%s\n", ut_tests[i].group, ut_tests[i].name);
			return 0;
		}
		if (strcmp(argv[a], "-n") == 0) {
			ut_nofork = 1;
			continue;
		}
		ngroups++;
		for (i = 0; i < LG_COUNTOF(ut_tests); i++) known |= strcmp(argv[a], ut_tests[i].group) == 0;
		if (!known) {
			fprintf(stderr, "usage: %s [-n] [-l] [GROUP...]\nunknown group '%s'; groups:", argv[0], argv[a]);
			for (i = 0; i < LG_COUNTOF(ut_tests); i++)
				if (i == 0 || strcmp(ut_tests[i].group, ut_tests[i - 1].group) != 0)
					fprintf(stderr, " %s", ut_tests[i].group);
			fprintf(stderr, "\n");
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	ut_cfg_env();
	for (i = 0; i < LG_COUNTOF(ut_tests);) {
		const char *g = ut_tests[i].group;
		int run = ngroups == 0, gp = 0, gf = 0, gchecks = 0;
		char name[128];
		for (a = 1; a < argc; a++) run |= strcmp(argv[a], g) == 0;
		for (; i < LG_COUNTOF(ut_tests) && strcmp(ut_tests[i].group, g) == 0; i++) {
			int nchecks, nfail;
			if (!run) continue;
			snprintf(name, sizeof name, "%s/%s", g, ut_tests[i].name);
			ut_name = name;
			ut_run(ut_tests[i].fn, &nchecks, &nfail);
			gchecks += nchecks;
			if (nfail) {
				printf("FAIL %s (%d failed assertions)\n", name, nfail);
				gf++;
			} else {
				gp++;
			}
		}
		if (run) printf("group %-8s %3d tests passed, %d failed, %d assertions evaluated\n", g, gp, gf, gchecks);
		passed += gp, failed += gf;
	}
	ut_cfg_cleanup();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
