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
 * One line per group also gives the number of ASSERTs evaluated.
 */
#define LLMGW_NO_MAIN
#include "../llmgw.c"

#include <sys/mman.h>

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

/* Guard pages: two slots, each a 4 MB region whose next page is PROT_NONE.
 * ut_guard() copies n bytes so they end exactly at the boundary. */
#define UT_GUARD_SIZE (4u << 20)
static char *ut_gbase[2];

static char *ut_guard_at(int slot, const void *p, size_t n)
{
	char *d;
	if (!ut_gbase[slot]) {
		size_t page = (size_t)sysconf(_SC_PAGESIZE);
		void *m = mmap(NULL, UT_GUARD_SIZE + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED || mprotect((char *)m + UT_GUARD_SIZE, page, PROT_NONE) != 0) {
			perror("mmap guard page");
			exit(2);
		}
		ut_gbase[slot] = (char *)m;
	}
	if (n > UT_GUARD_SIZE) {
		fprintf(stderr, "ut_guard: %zu bytes is too large\n", n);
		exit(2);
	}
	d = ut_gbase[slot] + UT_GUARD_SIZE - n;
	if (n) memmove(d, p, n);
	return d;
}
#define ut_guard(p, n) ut_guard_at(0, (p), (n))

/* A string and its length, for tables whose inputs may hold NUL bytes. */
#define S(lit) lit, sizeof(lit) - 1

/* ===== a reference JSON validator (recursive descent, RFC 8259) =========
 * An independent oracle: is s[0..n) one complete valid document, and how
 * many tokens does it have (keys count as tokens)? */
struct ut_ref {
	const char *s;
	size_t n, i;
	unsigned ntok;
	int depth;
};

static void ut_ref_ws(struct ut_ref *r)
{
	while (r->i < r->n &&
	       (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
		r->i++;
}

static int ut_ref_digit(struct ut_ref *r) { return r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9'; }

static int ut_ref_str(struct ut_ref *r)
{
	r->i++; /* the opening quote */
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
			} else if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' &&
			           c != 'r' && c != 't') {
				return 0;
			}
		}
	}
	return 0;
}

static int ut_ref_num(struct ut_ref *r)
{
	if (r->i < r->n && r->s[r->i] == '-') r->i++;
	if (r->i >= r->n) return 0;
	if (r->s[r->i] == '0')
		r->i++;
	else if (r->s[r->i] >= '1' && r->s[r->i] <= '9')
		while (ut_ref_digit(r)) r->i++;
	else
		return 0;
	if (r->i < r->n && r->s[r->i] == '.') {
		r->i++;
		if (!ut_ref_digit(r)) return 0;
		while (ut_ref_digit(r)) r->i++;
	}
	if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
		r->i++;
		if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-')) r->i++;
		if (!ut_ref_digit(r)) return 0;
		while (ut_ref_digit(r)) r->i++;
	}
	return 1;
}

static int ut_ref_value(struct ut_ref *r)
{
	static const char *const lits[] = {"true", "false", "null"};
	int k;
	ut_ref_ws(r);
	if (r->i >= r->n) return 0;
	r->ntok++;
	switch (r->s[r->i]) {
	case '{':
	case '[': {
		char close = r->s[r->i] == '{' ? '}' : ']';
		if (++r->depth > LLMGW_JSON_DEPTH) return 0;
		r->i++;
		ut_ref_ws(r);
		if (r->i < r->n && r->s[r->i] == close) {
			r->i++, r->depth--;
			return 1;
		}
		for (;;) {
			if (close == '}') {
				ut_ref_ws(r);
				if (r->i >= r->n || r->s[r->i] != '"') return 0;
				r->ntok++;
				if (!ut_ref_str(r)) return 0;
				ut_ref_ws(r);
				if (r->i >= r->n || r->s[r->i] != ':') return 0;
				r->i++;
			}
			if (!ut_ref_value(r)) return 0;
			ut_ref_ws(r);
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
	case '"': return ut_ref_str(r);
	case 't':
	case 'f':
	case 'n':
		for (k = 0; k < 3; k++) {
			size_t ln = strlen(lits[k]);
			if (r->s[r->i] == lits[k][0]) {
				if (r->n - r->i < ln || memcmp(r->s + r->i, lits[k], ln) != 0) return 0;
				r->i += ln;
				return 1;
			}
		}
		return 0;
	default: return ut_ref_num(r);
	}
}

static int ut_ref_json(const char *s, size_t n, unsigned *ntok)
{
	struct ut_ref r;
	memset(&r, 0, sizeof r);
	r.s = s, r.n = n;
	if (!ut_ref_value(&r)) return 0;
	ut_ref_ws(&r);
	if (r.i != n) return 0;
	if (ntok) *ntok = r.ntok;
	return 1;
}

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
     25},
    {"{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":"
     "{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":\"stop\"}],\"usage\":"
     "{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18,"
     "\"prompt_tokens_details\":{\"cached_tokens\":0}}}",
     31},
};

static void t_json_valid(void)
{
	size_t i;
	for (i = 0; i < LG_COUNTOF(ut_json_ok); i++) {
		char tmp[1024];
		size_t n = strlen(ut_json_ok[i].s);
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
		if (ASSERT(r == 14)) {
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
	lg_buf_init(&b, 0);
	ut_case("wz(NULL)");
	ASSERT(lg_json_wz(&b, NULL) == 0 && b.len == 2 && memcmp(b.p, "\"\"", 2) == 0);
	lg_buf_free(&b);
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
			ASSERT(u == (long)n && memcmp(out, in, n) == 0);
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
    "target = openai gpt-4o-2024 in=2.5 out=10 cache_read=1.25 cache_write=3 weight=2 context=128000 "
    "max_output=16384 quant=fp8", /* 45 */
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
	ASSERT(strstr(c->warn, "affinity") && strstr(c->warn, "budget") && strstr(c->warn, "state_dir"));
	ASSERT(!strstr(c->warn, "strategy"));
	/* [provider.*] */
	if (!ASSERT(c->nprov == 2)) return;
	o = c->prov[0], e = c->prov[1];
	ASSERT(ut_zeq(o->name, "openai") && o->line == 28 && o->type == LG_PT_OPENAI);
	ASSERT(ut_zeq(o->base_url, "http://api.example.com:8443/v1/") && ut_zeq(o->host, "api.example.com"));
	ASSERT(o->port == 8443 && o->tls == 0 && ut_zeq(o->base_path, "/v1"));
	ASSERT(ut_zeq(o->origin, "api.example.com:8443"));
	ASSERT(ut_zeq(o->api_key, "sk-file-secret")); /* first line, trimmed */
	if (ASSERT(o->nheaders == 2))
		ASSERT(ut_zeq(o->headers[0], "OpenAI-Organization: org-123") && ut_zeq(o->headers[1], "X-Tag: a#b;c"));
	ASSERT(o->zdr == 1 && o->collects_data == 0 && o->direct == 1 && o->max_concurrency == 4);
	ASSERT(ut_zeq(o->region, "eu"));
	ASSERT(ut_zeq(e->name, "echo") && e->line == 40 && e->type == LG_PT_MOCK && e->host == NULL);
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
				ASSERT(i == 0 ? !strstr(c->warn, "strategy") : strstr(c->warn, "strategy") != NULL);
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
	ASSERT(c == NULL && strstr(err, "ut.ini:1: ") == err && strstr(err, "TLS"));
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
    {"[provider.p]\ntype = openai\n", 1, 0, "needs a base_url"},
    {"[provider.a]\ntype = anthropic\nbase_url = http://h\n", 1, 0, "not supported"},
    {"[provider.p]\ntype = openai\nbase_url = ftp://x\n", 3, 0, "http:// or https://"},
    {"[provider.p]\ntype = openai\nbase_url = http://\n", 3, 0, "base_url"},
    {"[provider.p]\ntype = openai\nbase_url = http://h:0/v1\n", 3, 0, "bad port"},
    {"[provider.p]\ntype = openai\nbase_url = http://h:65536\n", 3, 0, "bad port"},
    {"[provider.p]\ntype = openai\nbase_url = http://h/a b\n", 3, 0, "unexpected character"},
    {"[provider.p]\ntype = mock\nheader = NoColon\n", 3, 0, "Name: value"},
    {"[provider.p]\ntype = mock\nheader = Bad Name: x\n", 3, 0, "Name: value"},
    {"[provider.p]\ntype = mock\nheader = : x\n", 3, 0, "Name: value"},
    {"[provider.p]\ntype = mock\nheader = X-A: a\rb\n", 3, 0, "line break"},
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
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x in=abc\n", 4, 0, "non-negative number"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x in=-1\n", 4, 0, "non-negative number"},
    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x in=1usd\n", 4, 0, "non-negative number"},
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
static void t_ini_errors_after_reading(void)
{
	static const struct {
		const char *text;
		int line, line2;
		const char *what;
	} cases[] = {
	    /* auth = none with a listener that is not loopback: the listen or the auth line */
	    {"[gateway]\nlisten = 0.0.0.0:8080\nauth = none\n", 2, 3, "auth = none"},
	    {"[gateway]\nauth = none\nlisten = 127.0.0.1:1\nlisten = 10.0.0.1:8080\n", 4, 2, "auth = none"},
	    /* a model name used twice: the second [model.m] line */
	    {"[provider.p]\ntype = mock\n[model.m]\ntarget = p x\n[model.m]\ntarget = p y\n", 5, 0, "already used"},
	    /* an alias that is another model's name: the aliases line or the other model's header */
	    {"[provider.p]\ntype = mock\n[model.a]\ntarget = p x\naliases = b\n[model.b]\ntarget = p y\n", 5, 6,
	     "already used"},
	};
	size_t i;
	for (i = 0; i < LG_COUNTOF(cases); i++) {
		char err[512], want[32], want2[32];
		struct lg_cfg *c = ut_cfg(cases[i].text, strlen(cases[i].text), err, sizeof err);
		snprintf(want, sizeof want, "ut.ini:%d: ", cases[i].line);
		snprintf(want2, sizeof want2, "ut.ini:%d: ", cases[i].line2);
		ut_case("config %s: got \"%s\", want \"%s...%s\"", UT_ESCZ(cases[i].text), err, want, cases[i].what);
		ASSERT(c == NULL && strstr(err, cases[i].what) != NULL);
		ASSERT(strncmp(err, want, strlen(want)) == 0 || (cases[i].line2 && strncmp(err, want2, strlen(want2)) == 0));
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
	    /* after "[v6]" only ":port" or "/path" may follow */
	    {"http://[::1]x/v1", 0, 0, 0, NULL, NULL},
	    {"http://[::1]80", 0, 0, 0, NULL, NULL},
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
			memset(host, 'a', 254);
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
