/*
 * tests/testlib.h - what the C test programs share. Included right after
 * "../llmgw.c" (it uses llmgw's static functions and types), by
 * tests/fuzz.c and tests/golden.c (and tests/unit.c for the first two
 * parts). Every function is static and may go unused in a program.
 *
 *   1. guard pages      tl_guard_at: bytes placed right before a PROT_NONE
 *                       page, so reading one byte past them crashes
 *   2. JSON oracle      tl_ref_json: an independent recursive-descent
 *                       validator (RFC 8259, nesting up to LLMGW_JSON_DEPTH)
 *   3. translations     tl_setup, tl_req, tl_build, tl_take, tl_end, tl_full,
 *                       tl_check, tl_done: a gateway with one provider of each
 *                       row of lg_prov_rows, a request built the way the server
 *                       builds one (lg_srv_completion, lg_route_plan), its
 *                       upstream request by lg_prov_build, and an upstream
 *                       answer fed the way lg_att_take and lg_att_end feed it,
 *                       the client's bytes caught in its connection's out
 *                       buffer; tl_check: the invariants of those bytes
 *   4. AWS event-stream tl_aws_frame: one frame written (with its own CRC-32,
 *                       not llmgw's), for recorded Bedrock streams
 *
 * Part 3 mirrors the attempt logic of section 12 (lg_att_take, lg_att_end,
 * lg_att_error, lg_att_stream_error, lg_route_failed) where that logic
 * touches the router, the store and sockets, and calls llmgw's own
 * functions for everything else (lg_prov_build, lg_att_events, the rows'
 * frame/event/full, the dialects' stream/final/native_*, lg_resp_*). When
 * those change, this mirror has to follow: each piece names what it copies.
 * Nothing here reads the clock or the random generator: ids, timestamps
 * and gw->rng are fixed, so the client's bytes are the same on every run.
 */
#ifndef LLMGW_TESTLIB_H
#define LLMGW_TESTLIB_H

#include <sys/mman.h>

#if defined(__GNUC__) || defined(__clang__)
#define TL_FN static __attribute__((unused))
#else
#define TL_FN static
#endif

/* ===== 1. guard pages =================================================== */

/* Two slots, each a TL_GUARD_SIZE region whose next page is PROT_NONE:
 * tl_guard_at copies n bytes so they end exactly at the boundary and
 * returns where they start (valid until the slot's next use).
 * tl_guard_at(s, "", 0) - n is n writable bytes ending at the boundary. */
#ifndef TL_GUARD_SIZE
#define TL_GUARD_SIZE (16u << 20)
#endif
TL_FN char *tl_guard_at(int slot, const void *p, size_t n)
{
	static char *base[2];
	char *d;
	if (!base[slot]) {
		size_t page = (size_t)sysconf(_SC_PAGESIZE);
		void *m = mmap(NULL, TL_GUARD_SIZE + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED || mprotect((char *)m + TL_GUARD_SIZE, page, PROT_NONE) != 0) {
			perror("mmap guard page");
			exit(2);
		}
		base[slot] = (char *)m;
	}
	if (n > TL_GUARD_SIZE) {
		fprintf(stderr, "tl_guard_at: %zu bytes is too large\n", n);
		exit(2);
	}
	d = base[slot] + TL_GUARD_SIZE - n;
	if (n) memmove(d, p, n);
	return d;
}

/* ===== 2. a reference JSON validator (recursive descent, RFC 8259) ======
 * An independent oracle: is s[0..n) one complete valid document, and how
 * many tokens does it have (keys count as tokens)? */
struct tl_ref {
	const char *s;
	size_t n, i;
	unsigned ntok;
	int depth;
};

static void tl_ref_ws(struct tl_ref *r)
{
	while (r->i < r->n &&
	       (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
		r->i++;
}

static int tl_ref_digit(struct tl_ref *r) { return r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9'; }

static int tl_ref_str(struct tl_ref *r)
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

static int tl_ref_num(struct tl_ref *r)
{
	if (r->i < r->n && r->s[r->i] == '-') r->i++;
	if (r->i >= r->n) return 0;
	if (r->s[r->i] == '0')
		r->i++;
	else if (r->s[r->i] >= '1' && r->s[r->i] <= '9')
		while (tl_ref_digit(r)) r->i++;
	else
		return 0;
	if (r->i < r->n && r->s[r->i] == '.') {
		r->i++;
		if (!tl_ref_digit(r)) return 0;
		while (tl_ref_digit(r)) r->i++;
	}
	if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
		r->i++;
		if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-')) r->i++;
		if (!tl_ref_digit(r)) return 0;
		while (tl_ref_digit(r)) r->i++;
	}
	return 1;
}

static int tl_ref_value(struct tl_ref *r)
{
	static const char *const lits[] = {"true", "false", "null"};
	int k;
	tl_ref_ws(r);
	if (r->i >= r->n) return 0;
	r->ntok++;
	switch (r->s[r->i]) {
	case '{':
	case '[': {
		char close = r->s[r->i] == '{' ? '}' : ']';
		if (++r->depth > LLMGW_JSON_DEPTH) return 0;
		r->i++;
		tl_ref_ws(r);
		if (r->i < r->n && r->s[r->i] == close) {
			r->i++, r->depth--;
			return 1;
		}
		for (;;) {
			if (close == '}') {
				tl_ref_ws(r);
				if (r->i >= r->n || r->s[r->i] != '"') return 0;
				r->ntok++;
				if (!tl_ref_str(r)) return 0;
				tl_ref_ws(r);
				if (r->i >= r->n || r->s[r->i] != ':') return 0;
				r->i++;
			}
			if (!tl_ref_value(r)) return 0;
			tl_ref_ws(r);
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
	case '"': return tl_ref_str(r);
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
	default: return tl_ref_num(r);
	}
}

/* 1 when s[0..n) is one valid document (its token count in *ntok, which
 * may be NULL), 0 otherwise. */
TL_FN int tl_ref_json(const char *s, size_t n, unsigned *ntok)
{
	struct tl_ref r;
	memset(&r, 0, sizeof r);
	r.s = s, r.n = n;
	if (!tl_ref_value(&r)) return 0;
	tl_ref_ws(&r);
	if (r.i != n) return 0;
	if (ntok) *ntok = r.ntok;
	return 1;
}

/* ===== 3. translations: requests, upstream bodies, client bytes ========= */

/* The gateway the translation tests run on: never started (no socket),
 * one provider of each row named after it, a model "golden" with one
 * target on each, priced so that costs show. */
#define TL_MODEL "golden"
#define TL_ID "gen-1-0badc0de"           /* r->id of every request */
#define TL_WALL0 ((int64_t)1735689600000) /* r->wall0: 2025-01-01T00:00:00Z */
#define TL_NOW ((int64_t)1000000)         /* gw->now */
#define TL_RNG 0x9E3779B97F4A7C15ULL      /* gw->rng before each request */
#define TL_NROWS ((int)LG_COUNTOF(lg_prov_rows))
#define TL_NDIALECTS ((int)LG_COUNTOF(lg_dialects))

static struct llmgw *tl_gw;
static struct lg_cand tl_cands[LG_COUNTOF(lg_prov_rows)];

/* Creates the gateway once; NULL, or what went wrong. */
TL_FN const char *tl_setup(void)
{
	static char err[600];
	struct lg_buf c;
	int i, k, rc;
	const struct lg_model *m;
	if (tl_gw) return NULL;
	lg_buf_init(&c, 0);
	lg_buf_addz(&c, "[gateway]\nlisten = 127.0.0.1:9\nlog_level = error\naccess_log =\nauth = none\n");
	for (i = 0; i < TL_NROWS; i++) {
		const struct lg_prov_row *row = &lg_prov_rows[i];
		lg_buf_printf(&c, "[provider.%s]\ntype = %s\n", row->name, row->name);
		/* never connected to: the tests feed the answers. A row with run
		 * (mock) answers without lg_prov_build; it gets an address all the
		 * same, so that its body writer can be run like the others' */
		lg_buf_printf(&c, "base_url = http://127.0.0.1:9/v1\napi_key = sk-golden-%s-0123456789\n", row->name);
	}
	lg_buf_addz(&c, "[model." TL_MODEL "]\n");
	for (i = 0; i < TL_NROWS; i++)
		lg_buf_printf(&c, "target = %s up-%s in=3 out=15 cache_read=0.3 cache_write=3.75\n", lg_prov_rows[i].name,
		              lg_prov_rows[i].name);
	lg_buf_addc(&c, 0);
	if (c.err || !(tl_gw = llmgw_new())) return "out of memory";
	err[0] = 0;
	rc = llmgw_load_string(tl_gw, c.p, "testlib.ini", err, sizeof err);
	lg_buf_free(&c);
	if (rc) return err;
	m = lg_cfg_find_model(tl_gw->cfg, lg_strz(TL_MODEL));
	for (i = 0; i < TL_NROWS; i++) {
		struct lg_cand *cd = &tl_cands[i];
		memset(cd, 0, sizeof *cd);
		for (k = 0; m && k < m->nt; k++)
			if (m->t[k].prov->row == &lg_prov_rows[i]) cd->t = &m->t[k];
		if (!cd->t) {
			snprintf(err, sizeof err, "no target of type %s in the test config", lg_prov_rows[i].name);
			return err;
		}
		cd->prov = cd->t->prov;
		cd->upstream = cd->t->upstream;
		cd->model = TL_MODEL;
	}
	tl_gw->now = TL_NOW;
	return NULL;
}

TL_FN void tl_teardown(void)
{
	if (tl_gw) llmgw_free(tl_gw);
	tl_gw = NULL;
}

static const char *const tl_wire_names[] = {"openai", "anthropic", "gemini", "bedrock"};

TL_FN const char *tl_wire_name(int wire)
{
	return wire >= 0 && wire < (int)LG_COUNTOF(tl_wire_names) ? tl_wire_names[wire] : "?";
}

/* A one-line client request ("Hi") in dialect d, into o: streamed or
 * not; TL_RQ_USAGE asks for usage in the stream (OpenAI's stream_options),
 * TL_RQ_JSON for a JSON answer (OpenAI's response_format json_schema; the
 * Anthropic dialect has neither). 0, or -1 for a dialect it does not know. */
#define TL_RQ_USAGE 1
#define TL_RQ_JSON 2
TL_FN int tl_client_body(const struct lg_dialect *d, int stream, int flags, struct lg_buf *o)
{
	if (d == LG_DIALECT_OPENAI) {
		lg_buf_addz(o, "{\"model\":\"" TL_MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]");
		if (stream) lg_buf_addz(o, ",\"stream\":true");
		if (stream && (flags & TL_RQ_USAGE)) lg_buf_addz(o, ",\"stream_options\":{\"include_usage\":true}");
		if (flags & TL_RQ_JSON)
			lg_buf_addz(o, ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"r\","
			               "\"schema\":{\"type\":\"object\"}}}");
	} else if (d == LG_DIALECT_ANTHROPIC) {
		lg_buf_addz(o, "{\"model\":\"" TL_MODEL "\",\"max_tokens\":1024,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]");
		if (stream) lg_buf_addz(o, ",\"stream\":true");
	} else if (d == LG_DIALECT_RESPONSES) {
		lg_buf_addz(o, "{\"model\":\"" TL_MODEL "\",\"input\":\"Hi\"");
		if (stream) lg_buf_addz(o, ",\"stream\":true");
		if (flags & TL_RQ_JSON)
			lg_buf_addz(o, ",\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"r\","
			               "\"schema\":{\"type\":\"object\"}}}");
	} else {
		return -1;
	}
	lg_buf_addc(o, '}');
	return o->err ? -1 : 0;
}

/* One request from its client's body to the last byte its client got. */
struct tl_run {
	struct lg_req *r;
	struct lg_conn cc; /* the client: what it is sent stays in cc.out */
	char *body;        /* the client's body (an exact-size copy, unless borrowed) */
	int own_body;
	int ended;   /* the attempt ended (completed, failed, or the stream broke) */
	int failed;  /* it failed before the client's first byte: the router would go on */
	int broke;   /* the client's stream ended with an error */
	char outcome[640];
};

/* lg_att_fail and lg_route_failed for the one attempt there is: after the
 * client's first byte the stream ends with an error event; before it the
 * attempt failed and the client has no byte of it (the router would try
 * the next candidate, or answer with an error). */
static void tl_route_failed(struct tl_run *x, int status, const char *reason, int retryable)
{
	struct lg_req *r = x->r;
	x->ended = 1;
	if (r->sent_head) {
		snprintf(r->errmsg, sizeof r->errmsg, "provider %s failed in the middle of the stream: %s",
		         r->served->prov->name, reason);
		lg_resp_stream_error(r, r->errmsg);
		x->broke = 1;
		snprintf(x->outcome, sizeof x->outcome, "stream failed: %s", reason);
		return;
	}
	x->failed = 1;
	snprintf(x->outcome, sizeof x->outcome, "attempt failed: status %d, %s: %s", status,
	         retryable ? "retryable" : "final", reason);
}

static void tl_on_fail(void *owner, int kind, const char *reason)
{
	LG_UNUSED(kind);
	tl_route_failed((struct tl_run *)owner, 0, reason, 1);
}

/* The checks lg_srv_completion makes before a request is admitted, the
 * token array it builds, and what lg_route_plan reads (max_out,
 * prompt_est). d: the client's dialect (its endpoint: /v1/chat/completions
 * for the first row, else the path whose row it is). borrow: body is used
 * in place (it must outlive the run), else copied. 0, or -1 with the
 * server's 400 message in x->outcome. */
TL_FN int tl_req(struct tl_run *x, const struct lg_dialect *d, const char *body, size_t n, int borrow)
{
	struct lg_req *r;
	struct lg_json *j;
	const char *s;
	int k, t;
	size_t i;
	memset(x, 0, sizeof *x);
	if (!(r = (struct lg_req *)calloc(1, sizeof *r))) abort();
	x->r = r;
	x->cc.gw = tl_gw;
	x->cc.fd = -1;
	x->cc.tm.hidx = -1;
	lg_buf_init(&x->cc.in, 0);
	lg_buf_init(&x->cc.out, 0);
	if (borrow) {
		x->body = (char *)(uintptr_t)body;
	} else {
		if (!(x->body = (char *)malloc(n ? n : 1))) abort();
		if (n) memcpy(x->body, body, n);
		x->own_body = 1;
	}
	/* lg_srv_new_req */
	r->d = d;
	r->gw = tl_gw;
	r->cc = &x->cc;
	r->cfg = tl_gw->cfg;
	r->a.chunk = 1024;
	r->minor = 1;
	r->t0 = tl_gw->now;
	r->wall0 = TL_WALL0;
	r->seq = 1;
	snprintf(r->id, sizeof r->id, "%s", TL_ID);
	r->up.gw = tl_gw;
	r->up.owner = x;
	r->up.tm.hidx = -1;
	r->rtm.hidx = -1;
	r->up.on_fail = tl_on_fail;
	lg_buf_init(&r->up.req, 0);
	lg_buf_init(&r->ubody, 0);
	lg_buf_init(&r->scratch, LLMGW_MAX_EVENT + 16);
	r->errmsg[0] = r->canon_err[0] = 0;
	tl_gw->rng = TL_RNG;
	r->ep = LG_EP_CHAT;
	for (i = LG_COUNTOF(lg_srv_paths); i-- > 0;) /* the first path of the dialect (not count_tokens) */
		if (lg_srv_paths[i].d == d) r->ep = lg_srv_paths[i].ep;
	r->body = x->body;
	r->body_len = n;
	/* lg_srv_completion */
	j = &r->j;
	s = r->body;
	memset(j, 0, sizeof *j);
	k = lg_json_parse(j, s, n); /* counting */
	if (k > 0) {
		if (!(j->t = (struct lg_jtok *)malloc((size_t)k * sizeof *j->t))) abort();
		j->cap = (uint32_t)k;
		k = lg_json_parse(j, s, n);
	}
	if (k <= 0) {
		snprintf(x->outcome, sizeof x->outcome, "400: malformed JSON in the request body");
		return -1;
	}
	if (j->t[0].type != LG_J_OBJ) {
		snprintf(x->outcome, sizeof x->outcome, "400: the request body must be a JSON object");
		return -1;
	}
	lg_req_index(r);
	t = r->tk[LG_TK_MODEL];
	if (lg_json_type(j, t) != LG_J_STR || j->t[t].end == j->t[t].start ||
	    !(r->model_req = lg_route_strdup(r, t)) || strlen(r->model_req) > 256) {
		snprintf(x->outcome, sizeof x->outcome, "400: field 'model' is missing or not a model name");
		return -1;
	}
	t = r->tk[LG_TK_MESSAGES];
	if (r->ep == LG_EP_RESPONSES) { /* input instead, canonicalized before the plan */
		if (r->tk[LG_TK_INPUT] < 0) {
			snprintf(x->outcome, sizeof x->outcome, "400: field 'input' is missing");
			return -1;
		}
	} else if (lg_json_type(j, t) != LG_J_ARR || j->t[t].size == 0) {
		snprintf(x->outcome, sizeof x->outcome, "400: field 'messages' must be a non-empty array");
		return -1;
	}
	t = r->tk[LG_TK_STREAM];
	if (t >= 0 && lg_json_type(j, t) != LG_J_TRUE && lg_json_type(j, t) != LG_J_FALSE &&
	    lg_json_type(j, t) != LG_J_NULL) {
		snprintf(x->outcome, sizeof x->outcome, "400: field 'stream' must be a boolean");
		return -1;
	}
	r->stream = lg_json_truthy(j, t);
	r->want_usage = lg_json_truthy(j, lg_json_get(j, s, r->tk[LG_TK_STREAM_OPTIONS], "include_usage")) ||
	                lg_json_truthy(j, lg_json_get(j, s, r->tk[LG_TK_USAGE], "include"));
	t = r->tk[LG_TK_MODELS];
	if (t >= 0) {
		uint32_t e;
		if (lg_json_type(j, t) != LG_J_ARR) {
			snprintf(x->outcome, sizeof x->outcome, "400: field 'models' must be an array of model names");
			return -1;
		}
		for (e = 0; e < j->t[t].size; e++)
			if (lg_json_type(j, lg_json_at(j, t, e)) != LG_J_STR) {
				snprintf(x->outcome, sizeof x->outcome, "400: field 'models' element %u is not a string", e);
				return -1;
			}
	}
	t = r->tk[LG_TK_PROVIDER];
	if (t >= 0 && lg_json_type(j, t) != LG_J_OBJ) {
		snprintf(x->outcome, sizeof x->outcome, "400: field 'provider' must be an object");
		return -1;
	}
	t = r->tk[LG_TK_USER];
	if (lg_json_type(j, t) == LG_J_STR && j->t[t].end - j->t[t].start <= 256) r->user = lg_route_strdup(r, t);
	/* lg_route_plan */
	r->prompt_est = (int64_t)(r->body_len + 3) / 4;
	r->max_out = LG_MAX(lg_json_i64(j, s, r->tk[LG_TK_MAX_COMPLETION_TOKENS]), lg_json_i64(j, s, r->tk[LG_TK_MAX_TOKENS]));
	r->max_out = LG_MAX(r->max_out, lg_json_i64(j, s, r->tk[LG_TK_MAX_OUTPUT_TOKENS]));
	return 0;
}

/* lg_route_next for candidate row (the request's only attempt): served,
 * native or not, the translation state, then lg_prov_build into r->up.req.
 * native: -1 as the gateway decides (lg_native), 0 or 1 to force it (0 on
 * a native pair reaches the row's body writer, which the gateway does not
 * use there). Returns lg_prov_build's answer (-2: r->canon_err says why);
 * on 0, *body is the upstream body, in r->up.req. */
TL_FN int tl_build(struct tl_run *x, int row, int native, lg_str *body)
{
	struct lg_req *r = x->r;
	const struct lg_cand *cd = &tl_cands[row];
	struct lg_buf *o = &r->up.req;
	const char *hend;
	int k;
	*body = lg_str_of("", 0);
	if (r->w) {
		lg_d_free(r->w);
		memset(r->w, 0, sizeof *r->w);
	}
	r->native = native < 0 ? lg_native(r, cd->prov) : native;
	if (!r->native && !r->w && !(r->w = (struct lg_wst *)calloc(1, sizeof *r->w))) abort();
	if (r->w) r->w->block_type = -1;
	if (!r->att && !(r->att = (struct lg_att_log *)calloc(1, sizeof *r->att))) abort();
	r->natt = 1;
	memset(r->att, 0, sizeof *r->att);
	r->att[0].prov = cd->prov->name;
	r->plan[0] = *cd;
	r->nplan = 1;
	r->cur = 1;
	r->served = &r->plan[0];
	r->t_att = tl_gw->now;
	r->ustatus = r->streams = r->stream_done = r->saw_finish = r->up_error = r->q_ok = 0;
	memset(&r->usage, 0, sizeof r->usage);
	r->ubody.off = r->ubody.len = 0;
	r->ubody.err = 0;
	k = lg_prov_build(r, cd, o);
	if (k == 0) {
		hend = lg_memfind(lg_buf_data(o), lg_buf_used(o), "\r\n\r\n");
		if (hend) *body = lg_str_of(hend + 4, (size_t)(lg_buf_data(o) + lg_buf_used(o) - hend - 4));
	}
	return k;
}

/* An upstream 200 arrived (lg_att_head): the stream's content type is
 * taken as the one the row wants. */
static void tl_head(struct tl_run *x)
{
	struct lg_req *r = x->r;
	if (r->ustatus) return;
	r->ustatus = 200;
	r->streams = 1;
	r->t_att_first = tl_gw->now;
}

/* lg_att_error: an error the parser recorded before the client's first byte */
static int tl_att_error(struct tl_run *x)
{
	struct lg_req *r = x->r;
	if (!r->up_error || r->sent_head) return 0;
	tl_route_failed(x, r->err_status, r->err_reason, r->err_retry);
	return 1;
}

/* lg_att_stream_error: an error inside the stream, after the first byte */
static int tl_att_stream_error(struct tl_run *x)
{
	struct lg_req *r = x->r;
	if (!r->up_error) return 0;
	x->ended = x->broke = 1;
	snprintf(x->outcome, sizeof x->outcome, "error in the stream: %.520s", r->errmsg);
	if (!r->native) {
		lg_resp_stream_error(r, r->errmsg);
	} else { /* the provider's own error event went through as it was */
		r->status = 502;
		lg_resp_stream_end(r);
	}
	return 1;
}

/* lg_att_take for a 2xx answer: stream bytes as the HTTP client hands them
 * over (any piece size). 0 while the attempt goes on, -1 once it ended. */
TL_FN int tl_take(struct tl_run *x, const char *p, size_t n)
{
	struct lg_req *r = x->r;
	if (x->ended) return -1;
	tl_head(x);
	if (lg_buf_used(&r->ubody) + n > LLMGW_MAX_RESPONSE) {
		tl_route_failed(x, 0, "upstream response larger than the limit", 1);
		return -1;
	}
	lg_buf_add(&r->ubody, p, n);
	if (r->stream && r->streams)
		if (lg_att_events(r) < 0 || tl_att_error(x) || tl_att_stream_error(x)) return -1;
	return 0;
}

/* lg_att_end for a 2xx answer: the upstream's body is complete. */
TL_FN void tl_end(struct tl_run *x)
{
	struct lg_req *r = x->r;
	const struct lg_prov_row *row = r->served->prov->row;
	if (x->ended) return;
	tl_head(x);
	if (r->stream) {
		if (lg_buf_used(&r->ubody) && row->frame_flush) { /* a last event without its end */
			lg_buf_addz(&r->ubody, row->frame_flush);
			if (lg_att_events(r) < 0 || tl_att_error(x) || tl_att_stream_error(x)) return;
		}
		if (!r->stream_done && !r->saw_finish) {
			tl_route_failed(x, r->ustatus, "the stream ended before it was complete", 1);
			return;
		}
		if (!r->stream_done) {
			if (r->native)
				r->d->native_end(r);
			else
				lg_ev(r, LG_EV_END, 0, LG_NOSTR, LG_NOSTR, 0);
		}
		lg_resp_stream_end(r);
	} else {
		struct lg_buf o;
		/* lg_att_end takes lg_buf_data(&r->ubody) as it is: NULL + 0 when
		 * nothing ever came (an empty 200), which clang's UBSan reports */
		const char *b = r->ubody.p ? lg_buf_data(&r->ubody) : NULL;
		size_t bn = lg_buf_used(&r->ubody);
		int k;
		lg_buf_init(&o, 0);
		if (r->native)
			k = r->d->native_full(r, b, bn, &o);
		else if ((k = row->full(r, b, bn)) == 0 && !r->up_error) {
			r->d->final(r, &o);
			k = o.err ? -1 : 1;
		}
		if (r->up_error || k < 0) {
			lg_buf_free(&o);
			if (!tl_att_error(x)) tl_route_failed(x, r->ustatus, "the upstream answered with malformed JSON", 1);
			return;
		}
		r->t_first = tl_gw->now;
		lg_resp_send(r, 200, "application/json", o.p, o.len, NULL);
		lg_buf_free(&o);
	}
	x->ended = 1;
	snprintf(x->outcome, sizeof x->outcome, "completed");
}

/* A whole (non-streamed) answer. */
TL_FN void tl_full(struct tl_run *x, const char *p, size_t n)
{
	tl_take(x, p, n);
	tl_end(x);
}

/* What the client got: the bytes in its out buffer. */
TL_FN lg_str tl_out(const struct tl_run *x)
{
	return x->cc.out.p ? lg_str_of(lg_buf_data(&x->cc.out), lg_buf_used(&x->cc.out)) : lg_str_of("", 0);
}

/* The outcome and the accounting, one line each: what the request's
 * record and the key's spend would get. */
TL_FN void tl_summary(const struct tl_run *x, struct lg_buf *o)
{
	const struct lg_usage *u = &x->r->usage;
	char cost[40];
	lg_fmt_g(cost, u->cost, 12);
	lg_buf_printf(o, "outcome: %s\n", x->outcome[0] ? x->outcome : "(the attempt did not end)");
	lg_buf_printf(o, "usage: prompt=%lld completion=%lld cached=%lld cache_write=%lld reasoning=%lld seen=%d "
	                 "cost=%s est_out=%lld\n",
	              (long long)u->prompt, (long long)u->completion, (long long)u->cached, (long long)u->cache_write,
	              (long long)u->reasoning, u->seen, cost, (long long)x->r->est_out);
}

TL_FN void tl_done(struct tl_run *x)
{
	struct lg_req *r = x->r;
	if (!r) return;
	/* lg_srv_finish: no timer of the request stays armed (a translated
	 * Anthropic stream arms r->rtm for its pings) */
	lg_timer_clear(tl_gw, &r->rtm);
	lg_timer_clear(tl_gw, &r->up.tm);
	lg_timer_clear(tl_gw, &x->cc.tm);
	lg_req_destroy(r); /* its buffers, token arrays, writer state, arena */
	lg_buf_free(&x->cc.in);
	lg_buf_free(&x->cc.out);
	if (x->own_body) free(x->body);
	x->r = NULL;
}

/* -- invariants of what a client got --------------------------------------- */

static const char *tl_fail_at(char *msg, size_t cap, size_t off, const char *what)
{
	snprintf(msg, cap, "client bytes, offset %zu: %s", off, what);
	return msg;
}

/* Checks what x's client got; NULL when it holds, else what broke (in a
 * static buffer). The rules: a failed attempt wrote nothing; otherwise one
 * HTTP/1.1 200 head; a whole answer has a Content-Length that is its
 * length and, translated, is one well-formed JSON document in valid
 * UTF-8; a stream is chunked, one complete SSE event per chunk, ends with
 * the last chunk and nothing after it, every event of a translated stream
 * is well-formed JSON in valid UTF-8 ([DONE] aside), an Anthropic event's
 * name is its data's type, an OpenAI client gets no event names, nothing
 * follows the end event ([DONE], message_stop) or an error event, and the
 * last event is the end event exactly when the stream completed, an error
 * event when it broke. Natively forwarded streams pass on what the
 * upstream sent: an event that is not JSON (or not valid UTF-8) goes as it
 * came, and one whose data has no "type" keeps the upstream's name. */
TL_FN const char *tl_check(const struct tl_run *x)
{
	static char msg[300];
	const struct lg_req *r = x->r;
	const struct lg_dialect *d = r->d;
	lg_str out = tl_out(x);
	const char *b = out.p;
	size_t n = out.n, at, hl;
	struct lg_http m;
	int k, nev = 0, ended = 0, last_end = 0, last_err = 0;
	if (!x->ended) return "the attempt did not end";
	if (x->failed) return n ? tl_fail_at(msg, sizeof msg, 0, "a failed attempt wrote to the client") : NULL;
	k = lg_http_parse_resp(b, n, &m);
	if (k <= 0) return tl_fail_at(msg, sizeof msg, 0, "no complete HTTP response head");
	hl = (size_t)k;
	if (m.status != 200 || m.minor != 1) return tl_fail_at(msg, sizeof msg, 0, "not an HTTP/1.1 200");
	if (!r->stream) {
		lg_str cl = lg_http_get(&m, "content-length");
		char num[24];
		snprintf(num, sizeof num, "%zu", n - hl);
		if (!lg_str_eq(cl, num)) return tl_fail_at(msg, sizeof msg, hl, "Content-Length is not the body's length");
		if (!r->native && !tl_ref_json(b + hl, n - hl, NULL))
			return tl_fail_at(msg, sizeof msg, hl, "the body is not well-formed JSON");
		if (!r->native && !lg_utf8_valid(b + hl, n - hl))
			return tl_fail_at(msg, sizeof msg, hl, "the body is not valid UTF-8");
		return NULL;
	}
	if (!lg_str_eq(lg_http_get(&m, "transfer-encoding"), "chunked"))
		return tl_fail_at(msg, sizeof msg, 0, "a stream that is not chunked");
	if (!lg_str_eq(lg_http_get(&m, "content-type"), "text/event-stream"))
		return tl_fail_at(msg, sizeof msg, 0, "a stream that is not text/event-stream");
	for (at = hl;;) { /* chunk by chunk */
		size_t size = 0, st = at, ds, used;
		struct lg_sse_ev ev;
		char *scratch;
		lg_str data;
		int hex;
		while (at < n && (hex = lg_hexval((unsigned char)b[at])) >= 0 && at - st < 15) size = size * 16 + (size_t)hex, at++;
		if (at == st || at + 2 > n || b[at] != '\r' || b[at + 1] != '\n')
			return tl_fail_at(msg, sizeof msg, st, "a chunk size line that is not hex CRLF");
		at += 2;
		if (size == 0) {
			if (at + 2 != n || b[at] != '\r' || b[at + 1] != '\n')
				return tl_fail_at(msg, sizeof msg, at, "the last chunk is not CRLF and the end");
			break;
		}
		if (size > n - at || n - at - size < 2 || b[at + size] != '\r' || b[at + size + 1] != '\n')
			return tl_fail_at(msg, sizeof msg, st, "a chunk shorter than its size, or without its CRLF");
		ds = at;
		if (ended) return tl_fail_at(msg, sizeof msg, ds, "an event after the end of the stream");
		if (!(scratch = (char *)malloc(size))) abort();
		used = lg_sse_next(b + ds, size, &ev, scratch);
		if (used != size || !ev.ndata) {
			free(scratch);
			return tl_fail_at(msg, sizeof msg, ds, "a chunk that is not one complete SSE event with data");
		}
		nev++;
		data = ev.data;
		last_end = last_err = 0;
		if (d == LG_DIALECT_OPENAI && ev.event.n) {
			free(scratch);
			return tl_fail_at(msg, sizeof msg, ds, "an event name in an OpenAI stream");
		}
		if (lg_str_eq(data, "[DONE]") && (d == LG_DIALECT_OPENAI || !r->native)) {
			if (d != LG_DIALECT_OPENAI) {
				free(scratch);
				return tl_fail_at(msg, sizeof msg, ds, "[DONE] in a stream of another dialect");
			}
			ended = last_end = 1;
		} else {
			int json = tl_ref_json(data.p, data.n, NULL);
			const char *bad = NULL;
			if (!json && !r->native) bad = "an event whose data is not well-formed JSON";
			if (json && !r->native && !lg_utf8_valid(data.p, data.n)) bad = "an event whose data is not valid UTF-8";
			if (json && !bad) { /* its type (Anthropic) or its error member (OpenAI) */
				struct lg_json j;
				int tk;
				memset(&j, 0, sizeof j);
				tk = lg_json_parse(&j, data.p, data.n);
				if (tk > 0) {
					lg_str ty;
					if (!(j.t = (struct lg_jtok *)malloc((size_t)tk * sizeof *j.t))) abort();
					j.cap = (uint32_t)tk;
					lg_json_parse(&j, data.p, data.n);
					if (j.t[0].type == LG_J_OBJ && d == LG_DIALECT_RESPONSES) {
						/* the Responses API: name = type, sequence numbers 0, 1, 2, ...;
						 * it ends with response.completed / .incomplete, or breaks with
						 * response.failed (an error event may come just before it) */
						ty = lg_jesc(&j, data.p, lg_json_get(&j, data.p, 0, "type"));
						if (!lg_str_eq(ty, "error") && (ty.n != ev.event.n || memcmp(ty.p, ev.event.p, ty.n) != 0))
							bad = "a Responses event whose name is not its type";
						else if (lg_json_i64(&j, data.p, lg_json_get(&j, data.p, 0, "sequence_number")) != nev - 1)
							bad = "a Responses event out of sequence (sequence_number)";
						if (lg_str_eq(ty, "response.completed") || lg_str_eq(ty, "response.incomplete"))
							ended = last_end = 1;
						if (lg_str_eq(ty, "response.failed")) ended = last_err = 1;
					} else if (j.t[0].type == LG_J_OBJ && d == LG_DIALECT_ANTHROPIC) {
						size_t tn;
						ty = lg_jesc(&j, data.p, lg_json_get(&j, data.p, 0, "type"));
						/* a native event keeps the upstream's name when its data has
						 * no type, and has it cut to 60 bytes (lg_d_an_native_event) */
						tn = r->native ? LG_MIN(ty.n, 60) : ty.n;
						if ((ty.n || !r->native) && (tn != ev.event.n || memcmp(ty.p, ev.event.p, tn) != 0))
							bad = "an Anthropic event whose name is not its type";
						if (!ty.n) ty = ev.event;
						if (lg_str_eq(ty, "message_stop")) ended = last_end = 1;
						if (lg_str_eq(ty, "error")) ended = last_err = 1;
					} else if (j.t[0].type == LG_J_OBJ && lg_json_get(&j, data.p, 0, "error") >= 0) {
						ended = last_err = 1;
					}
					free(j.t);
				}
			}
			if (bad) {
				free(scratch);
				return tl_fail_at(msg, sizeof msg, ds, bad);
			}
		}
		free(scratch);
		at += size + 2;
	}
	if (!nev) return tl_fail_at(msg, sizeof msg, hl, "a stream without events");
	if (x->broke && !last_err) return tl_fail_at(msg, sizeof msg, hl, "a broken stream whose last event is no error");
	if (!x->broke && !last_end)
		return tl_fail_at(msg, sizeof msg, hl, "a completed stream whose last event is not its end");
	return NULL;
}

/* ===== 4. AWS event-stream frames ======================================= */

/* CRC-32 (IEEE, reflected), bit by bit: independent of llmgw's lg_crc32. */
TL_FN uint32_t tl_crc32(const unsigned char *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;
	size_t i;
	int k;
	for (i = 0; i < n; i++) {
		c ^= p[i];
		for (k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
	}
	return ~c;
}

static void tl_be32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static void tl_aws_header(struct lg_buf *h, const char *name, const char *value)
{
	size_t nl = strlen(name), vl = strlen(value);
	unsigned char c[3];
	c[0] = (unsigned char)nl;
	lg_buf_add(h, c, 1);
	lg_buf_add(h, name, nl);
	c[0] = 7, c[1] = (unsigned char)(vl >> 8), c[2] = (unsigned char)vl; /* type 7: string, u16 length */
	lg_buf_add(h, c, 3);
	lg_buf_add(h, value, vl);
}

/* One frame as Bedrock's ConverseStream sends it, appended to o: kind
 * "event" (type = :event-type), "exception" (type = :exception-type), or
 * "error", an AWS event-stream error message (type = :error-code, the
 * payload as :error-message, no payload). */
TL_FN void tl_aws_frame(struct lg_buf *o, const char *kind, const char *type, const char *payload, size_t pn)
{
	struct lg_buf h;
	unsigned char pre[12], crc[4];
	size_t start = o->len, total;
	int exc = strcmp(kind, "exception") == 0, err = strcmp(kind, "error") == 0;
	lg_buf_init(&h, 0);
	if (err) {
		char msg[256];
		snprintf(msg, sizeof msg, "%.*s", (int)LG_MIN(pn, sizeof msg - 1), payload);
		tl_aws_header(&h, ":error-code", type);
		tl_aws_header(&h, ":error-message", msg);
		tl_aws_header(&h, ":message-type", "error");
		pn = 0;
	} else {
		tl_aws_header(&h, exc ? ":exception-type" : ":event-type", type);
		tl_aws_header(&h, ":content-type", "application/json");
		tl_aws_header(&h, ":message-type", exc ? "exception" : "event");
	}
	total = 12 + h.len + pn + 4;
	tl_be32(pre, (uint32_t)total);
	tl_be32(pre + 4, (uint32_t)h.len);
	tl_be32(pre + 8, tl_crc32(pre, 8));
	lg_buf_add(o, pre, 12);
	lg_buf_add(o, h.p, h.len);
	lg_buf_add(o, payload, pn);
	if (!o->err) tl_be32(crc, tl_crc32((const unsigned char *)o->p + start, o->len - start));
	lg_buf_add(o, crc, 4);
	lg_buf_free(&h);
}

#endif /* LLMGW_TESTLIB_H */
