/*
 * tests/golden.c - llmgw's translators against golden files (issue 14.9).
 *
 * Build:  cc -std=c99 -Wall -Wextra -Werror -O1 -g -fsanitize=address,undefined \
 *            -o build/golden tests/golden.c -lpthread        (make build/golden)
 * Run:    build/golden [FILTER...]        cases whose name starts with a FILTER
 *         GOLDEN_UPDATE=1 build/golden    rewrites the expected files (and
 *                                         deletes those no case makes any more)
 *         build/golden --seeds DIR        writes every case's input as a fuzz
 *                                         seed into DIR/{canon,stream,full,evstream}
 *         (-d DIR: the golden directory, default tests/golden)
 *
 * Like tests/unit.c it includes llmgw.c, and drives it through
 * tests/testlib.h part 3: a gateway with one provider of each row of
 * lg_prov_rows, requests built as the server builds them, lg_prov_build for
 * the upstream request, and upstream answers fed as lg_att_take and
 * lg_att_end feed them; what the client got is the bytes in its
 * connection's out buffer. Ids, timestamps and the random generator are
 * fixed (TL_ID, TL_WALL0, TL_RNG), so every output is the same on every run.
 *
 * tests/golden/ holds three kinds of case, each an input file and one
 * expected file (.out) per provider row and client dialect it runs with:
 *
 *   req/CASE.DIALECT.req.json       a client body in that dialect
 *     CASE.DIALECT.ROW.out          the upstream body lg_prov_build writes for
 *                                   that provider row: natively forwarded
 *                                   where the gateway forwards natively
 *                                   (lg_native), else canonical request + the
 *                                   row's body writer; "error: ..." when the
 *                                   row cannot take it (-2, canon_err),
 *                                   "rejected: ..." when the server refuses
 *                                   the body before any of that
 *     CASE.DIALECT.ROW.writer.out   on a native pair, the row's writer all
 *                                   the same (the gateway does not send it)
 *   stream/CASE.WIRE.sse            a recorded upstream stream of that wire
 *   stream/CASE.bedrock.frames      (Bedrock: AWS event-stream frames, one
 *                                   per line: "event TYPE JSON", "exception
 *                                   TYPE JSON", "error CODE MESSAGE" (an
 *                                   event-stream error message), "corrupt"
 *                                   flips the last CRC byte, "cut N" drops
 *                                   the last N bytes)
 *     CASE.ROW.DIALECT.out          for every row of that wire and every
 *                                   client dialect: the outcome line, the
 *                                   usage line, a blank line, then the exact
 *                                   bytes the client got (HTTP head, chunks)
 *   full/CASE.WIRE.resp.json        a whole provider answer, likewise
 *   stream|full/CASE.DIALECT.req.json   optional: the client request of that
 *                                   case in that dialect (default: testlib's
 *                                   tl_client_body, a one-line "Hi" asking for
 *                                   usage, streamed or not)
 *
 * Every stream is also fed cut at every byte boundary in two pieces: the
 * client's bytes must not depend on how the upstream's arrive. What the
 * client got must hold testlib.h's tl_check invariants, and every upstream
 * body must be well-formed JSON in valid UTF-8; writers must not depend on
 * the attempts before them (a body built on a request that already went to
 * the other rows, as a fallback does, is the same).
 *
 * Counting: one case per input x row x dialect (x writer); a mismatch
 * prints the case, the first differing byte offset and both versions. The
 * last line is "N passed, N failed".
 */
#define LLMGW_NO_MAIN
#include "../llmgw.c"
#include "testlib.h"

#include <dirent.h>

static const char *gd_dir = "tests/golden";
static const char *gd_seeds; /* --seeds DIR */
static int gd_update, gd_passed, gd_failed, gd_nupdated;
static char **gd_filters;
static int gd_nfilters;
static struct lg_buf gd_seen; /* expected files this run made or compared, NUL-separated */

/* ---- files -------------------------------------------------------------- */

static char *gd_read(const char *path, size_t *n)
{
	int e = 0;
	return lg_read_file(path, 64u << 20, n, &e);
}

static int gd_write(const char *path, const char *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	int ok = f && fwrite(p, 1, n, f) == n;
	if (f && fclose(f) != 0) ok = 0;
	if (!ok) fprintf(stderr, "golden: cannot write %s: %s\n", path, strerror(errno));
	return ok;
}

static int gd_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static int gd_ends(const char *s, const char *tail)
{
	size_t n = strlen(s), t = strlen(tail);
	return n >= t && strcmp(s + n - t, tail) == 0;
}

/* The names in dir (sorted), NULL-terminated; free with gd_free_list. */
static int gd_skip_dot(const struct dirent *d) { return d->d_name[0] != '.'; }

static char **gd_list(const char *dir, int *count)
{
	struct dirent **ents;
	char **out;
	int n = scandir(dir, &ents, gd_skip_dot, alphasort), i;
	*count = 0;
	if (n < 0) return NULL;
	if (!(out = (char **)calloc((size_t)n + 1, sizeof *out))) abort();
	for (i = 0; i < n; i++) {
		size_t l = strlen(ents[i]->d_name);
		if (!(out[i] = (char *)malloc(l + 1))) abort();
		memcpy(out[i], ents[i]->d_name, l + 1);
		free(ents[i]);
	}
	free(ents);
	*count = n;
	return out;
}

static void gd_free_list(char **l)
{
	int i;
	for (i = 0; l && l[i]; i++) free(l[i]);
	free(l);
}

/* ---- reporting ---------------------------------------------------------- */

static int gd_selected(const char *name)
{
	int i;
	if (!gd_nfilters) return 1;
	for (i = 0; i < gd_nfilters; i++)
		if (strncmp(name, gd_filters[i], strlen(gd_filters[i])) == 0) return 1;
	return 0;
}

/* p[from..to) for a message: line breaks as they are, other control bytes escaped */
static void gd_show(const char *label, const char *p, size_t n, size_t off)
{
	size_t from = off > 1500 ? off - 1500 : 0, to = LG_MIN(n, from + 4000), i;
	printf("--- %s (%zu bytes)%s\n", label, n, from ? ", from byte" : "");
	if (from) printf("... %zu bytes before\n", from);
	for (i = from; i < to; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\n' || c == '\t' || c >= 0x20)
			putchar(c);
		else if (c == '\r')
			fputs("\\r", stdout);
		else
			printf("\\x%02x", c);
	}
	if (to < n) printf("\n... %zu bytes more", n - to);
	printf("\n--- end of %s\n", label);
}

static void gd_seen_add(const char *name)
{
	lg_buf_addz(&gd_seen, name);
	lg_buf_addc(&gd_seen, 0);
}

/* One case: got against the expected file name (relative to gd_dir); a
 * problem (an invariant that broke) fails it as well. */
static void gd_expect(const char *name, const char *got, size_t gn, const char *problem)
{
	char path[4096];
	size_t en = 0, i;
	char *exp;
	gd_seen_add(name);
	snprintf(path, sizeof path, "%s/%s", gd_dir, name);
	exp = gd_read(path, &en);
	if (gd_update) {
		if (!exp || en != gn || (gn && memcmp(exp, got, gn) != 0)) {
			if (gd_write(path, got, gn)) gd_nupdated++;
			printf("updated %s\n", name);
		}
		free(exp);
		exp = NULL;
		en = gn;
	}
	if (problem) {
		printf("FAIL %s: %s\n", name, problem);
		if (exp && (en != gn || (gn && memcmp(exp, got, gn) != 0))) {
			for (i = 0; i < en && i < gn && exp[i] == got[i]; i++) {
			}
			printf("     and differs at byte %zu (expected %zu bytes, got %zu)\n", i, en, gn);
			gd_show("expected", exp, en, i);
			gd_show("got", got, gn, i);
		}
		gd_failed++;
	} else if (!gd_update && !exp) {
		printf("FAIL %s: no expected file %s (GOLDEN_UPDATE=1 build/golden writes it)\n", name, path);
		gd_show("got", got, gn, 0);
		gd_failed++;
	} else if (!gd_update && (en != gn || (gn && memcmp(exp, got, gn) != 0))) {
		for (i = 0; i < en && i < gn && exp[i] == got[i]; i++) {
		}
		printf("FAIL %s: differs at byte %zu (expected %zu bytes, got %zu)\n", name, i, en, gn);
		gd_show("expected", exp, en, i);
		gd_show("got", got, gn, i);
		gd_failed++;
	} else {
		gd_passed++;
	}
	free(exp);
}

/* ---- inputs ----------------------------------------------------------- */

static const struct lg_dialect *gd_dialect(const char *name, size_t n)
{
	int i;
	for (i = 0; i < TL_NDIALECTS; i++)
		if (strlen(lg_dialects[i].name) == n && memcmp(lg_dialects[i].name, name, n) == 0) return &lg_dialects[i];
	return NULL;
}

static int gd_wire(const char *name, size_t n)
{
	int w;
	for (w = 0; w < (int)LG_COUNTOF(tl_wire_names); w++)
		if (strlen(tl_wire_names[w]) == n && memcmp(tl_wire_names[w], name, n) == 0) return w;
	return -1;
}

/* A .frames file as the bytes Bedrock would send. NULL with *err set when
 * a line is not understood. */
static char *gd_frames(const char *text, size_t tn, size_t *n, const char **err)
{
	struct lg_buf o;
	size_t at = 0, last = 0;
	lg_buf_init(&o, 0);
	*err = NULL;
	while (at < tn) {
		const char *ln = text + at, *e = (const char *)memchr(ln, '\n', tn - at);
		size_t len = e ? (size_t)(e - ln) : tn - at;
		char kind[16], type[128];
		int used = 0;
		at += len + (e ? 1 : 0);
		while (len && (ln[len - 1] == '\r' || ln[len - 1] == ' ')) len--;
		if (!len || ln[0] == '#') continue;
		if (len == 7 && memcmp(ln, "corrupt", 7) == 0) {
			if (o.len) o.p[o.len - 1] ^= 0x5a;
			continue;
		}
		if (len > 4 && memcmp(ln, "cut ", 4) == 0) {
			size_t k = (size_t)strtoul(ln + 4, NULL, 10);
			o.len = k < o.len ? o.len - k : 0;
			continue;
		}
		{
			char tmp[256];
			snprintf(tmp, sizeof tmp, "%.*s", (int)LG_MIN(len, sizeof tmp - 1), ln);
			if (sscanf(tmp, "%15s %127s %n", kind, type, &used) < 2 || !used ||
			    (strcmp(kind, "event") != 0 && strcmp(kind, "exception") != 0 && strcmp(kind, "error") != 0)) {
				*err = "a .frames line that is not \"event TYPE JSON\", \"exception TYPE JSON\", \"error CODE "
				       "MESSAGE\", corrupt or cut N";
				lg_buf_free(&o);
				return NULL;
			}
		}
		last = o.len;
		tl_aws_frame(&o, kind, type, ln + used, len - (size_t)used);
	}
	LG_UNUSED(last);
	if (o.err) {
		lg_buf_free(&o);
		*err = "out of memory";
		return NULL;
	}
	*n = o.len;
	if (!o.p) {
		if (!(o.p = (char *)malloc(1))) abort();
	}
	return o.p;
}

/* ---- kind 1: client body -> upstream body ------------------------------- */

/* What goes in an expected file for one build; a problem when an
 * upstream body breaks a rule. */
static const char *gd_build_text(struct tl_run *x, int k, lg_str body, struct lg_buf *o)
{
	if (k == 0) {
		lg_buf_adds(o, body);
		if (!tl_ref_json(body.p, body.n, NULL)) return "the upstream body is not well-formed JSON";
		if (!lg_utf8_valid(body.p, body.n)) return "the upstream body is not valid UTF-8";
	} else if (k == -2) {
		lg_buf_printf(o, "error: %s\n", x->r->canon_err);
		if (!x->r->canon_err[0]) return "-2 without canon_err";
	} else {
		lg_buf_printf(o, "build failed (%d)\n", k);
	}
	return NULL;
}

static void gd_req_case(const char *file)
{
	char path[4096], name[4096], cname[512];
	const char *dot = strchr(file, '.'), *dot2;
	const struct lg_dialect *d;
	size_t n = 0;
	char *body;
	int row, variant;
	struct tl_run shared;
	int shared_ok;
	if (!dot || !(dot2 = strchr(dot + 1, '.')) || !(d = gd_dialect(dot + 1, (size_t)(dot2 - dot - 1)))) {
		printf("FAIL req/%s: not CASE.DIALECT.req.json with a dialect of lg_dialects\n", file);
		gd_failed++;
		return;
	}
	snprintf(cname, sizeof cname, "%.*s", (int)(dot2 - file), file);
	snprintf(path, sizeof path, "%s/req/%s", gd_dir, file);
	if (!(body = gd_read(path, &n))) {
		printf("FAIL req/%s: cannot read it\n", file);
		gd_failed++;
		return;
	}
	/* one request that goes to every row in turn, as fallbacks do */
	shared_ok = tl_req(&shared, d, body, n, 0) == 0;
	for (row = 0; row < TL_NROWS; row++)
		for (variant = 0; variant < 2; variant++) {
			struct tl_run x;
			struct lg_buf o;
			const char *problem = NULL;
			int native = variant == 0 ? -1 : 0, k = 0;
			lg_str up;
			if (variant == 1 && !lg_native(shared.r, tl_cands[row].prov)) continue; /* the writer is the main file */
			snprintf(name, sizeof name, "req/%s.%s%s.out", cname, lg_prov_rows[row].name, variant ? ".writer" : "");
			if (!gd_selected(name)) {
				gd_seen_add(name);
				continue;
			}
			lg_buf_init(&o, 0);
			if (tl_req(&x, d, body, n, 0) < 0) {
				lg_buf_printf(&o, "rejected: %s\n", x.outcome);
			} else {
				k = tl_build(&x, row, native, &up);
				problem = gd_build_text(&x, k, up, &o);
				if (!problem && shared_ok) { /* the same after other attempts */
					struct lg_buf o2;
					lg_str up2;
					int k2 = tl_build(&shared, row, native, &up2);
					lg_buf_init(&o2, 0);
					gd_build_text(&shared, k2, up2, &o2);
					if (o2.len != o.len || (o.len && memcmp(o.p, o2.p, o.len) != 0))
						problem = "a different upstream body when the request went to other rows before (fallback)";
					lg_buf_free(&o2);
				}
			}
			gd_expect(name, o.p ? o.p : "", o.len, problem);
			lg_buf_free(&o);
			tl_done(&x);
		}
	if (gd_seeds) { /* canon seed: the dialect's index, then the body */
		char sp[4096];
		struct lg_buf s;
		lg_buf_init(&s, 0);
		lg_buf_addc(&s, (char)(d - lg_dialects));
		lg_buf_add(&s, body, n);
		snprintf(sp, sizeof sp, "%s/canon/golden-%s", gd_seeds, cname);
		gd_write(sp, s.p, s.len);
		lg_buf_free(&s);
	}
	tl_done(&shared);
	free(body);
}

/* ---- kinds 2 and 3: upstream answer -> client bytes --------------------- */

/* One run: the request, its upstream request, the answer fed in pieces
 * ending at cut (0: whole), then the end. The summary and the client's
 * bytes into o; *problem: an invariant that broke. */
static void gd_answer_run(const struct lg_dialect *d, const char *req, size_t rn, int row, int stream,
                          const char *in, size_t n, size_t cut, struct lg_buf *o, const char **problem)
{
	struct tl_run x;
	lg_str up;
	int k;
	*problem = NULL;
	if (tl_req(&x, d, req, rn, 1) < 0) {
		lg_buf_printf(o, "rejected: %s\n", x.outcome);
		*problem = "the case's client request is refused";
		tl_done(&x);
		return;
	}
	if (x.r->stream != stream) *problem = stream ? "the case's request does not stream" : "the case's request streams";
	if ((k = tl_build(&x, row, -1, &up)) != 0) {
		lg_buf_printf(o, "build: %d %s\n", k, x.r->canon_err);
		*problem = "the case's request cannot be built for this row";
		tl_done(&x);
		return;
	}
	if (cut && cut < n) {
		if (tl_take(&x, in, cut) == 0) tl_take(&x, in + cut, n - cut);
	} else {
		tl_take(&x, in, n);
	}
	tl_end(&x);
	tl_summary(&x, o);
	lg_buf_addc(o, '\n');
	lg_buf_adds(o, tl_out(&x));
	if (!*problem) *problem = tl_check(&x);
	tl_done(&x);
}

/* A stream or full case: its input against every row of its wire and
 * every client dialect. */
static void gd_answer_case(const char *kind, const char *file)
{
	char path[4096], name[4096], cname[512], msg[400];
	int stream = strcmp(kind, "stream") == 0, wire, row, di;
	const char *dot = strchr(file, '.'), *dot2, *err = NULL;
	size_t n = 0, tn = 0;
	char *in, *text;
	if (!dot || !(dot2 = strchr(dot + 1, '.')) || (wire = gd_wire(dot + 1, (size_t)(dot2 - dot - 1))) < 0) {
		printf("FAIL %s/%s: not CASE.WIRE.* with a wire of %s\n", kind, file, "openai, anthropic, gemini, bedrock");
		gd_failed++;
		return;
	}
	snprintf(cname, sizeof cname, "%.*s", (int)(dot - file), file);
	snprintf(path, sizeof path, "%s/%s/%s", gd_dir, kind, file);
	if (!(text = gd_read(path, &tn))) {
		printf("FAIL %s/%s: cannot read it\n", kind, file);
		gd_failed++;
		return;
	}
	if (gd_ends(file, ".frames")) {
		in = gd_frames(text, tn, &n, &err);
		free(text);
		if (!in) {
			printf("FAIL %s/%s: %s\n", kind, file, err);
			gd_failed++;
			return;
		}
	} else {
		in = text, n = tn;
	}
	for (row = 0; row < TL_NROWS; row++) {
		if (lg_prov_rows[row].wire != wire) continue;
		for (di = 0; di < TL_NDIALECTS; di++) {
			const struct lg_dialect *d = &lg_dialects[di];
			struct lg_buf whole, dflt;
			const char *problem = NULL, *req = NULL;
			char *own = NULL;
			size_t rn = 0, cut;
			snprintf(name, sizeof name, "%s/%s.%s.%s.out", kind, cname, lg_prov_rows[row].name, d->name);
			if (!gd_selected(name)) {
				gd_seen_add(name);
				continue;
			}
			snprintf(path, sizeof path, "%s/%s/%s.%s.req.json", gd_dir, kind, cname, d->name);
			lg_buf_init(&dflt, 0);
			if (gd_exists(path)) {
				req = own = gd_read(path, &rn);
			} else if (tl_client_body(d, stream, TL_RQ_USAGE, &dflt) == 0) { /* "Hi", usage asked for */
				req = dflt.p, rn = dflt.len;
			}
			lg_buf_init(&whole, 0);
			if (!req) {
				problem = "no request for this dialect: add CASE.DIALECT.req.json, or the dialect to tl_client_body";
			} else {
				gd_answer_run(d, req, rn, row, stream, in, n, 0, &whole, &problem);
				/* the framing must not depend on how the bytes arrive */
				for (cut = 1; stream && !problem && cut < n; cut++) {
					struct lg_buf part;
					const char *p2;
					lg_buf_init(&part, 0);
					gd_answer_run(d, req, rn, row, stream, in, n, cut, &part, &p2);
					if (p2 || part.len != whole.len || memcmp(part.p, whole.p, whole.len) != 0) {
						size_t i;
						for (i = 0; i < part.len && i < whole.len && part.p[i] == whole.p[i]; i++) {
						}
						snprintf(msg, sizeof msg, "cut in two at byte %zu of the stream, the client's bytes "
						         "differ at byte %zu%s%s", cut, i, p2 ? ": " : "", p2 ? p2 : "");
						problem = msg;
						gd_show("fed whole", whole.p, whole.len, i);
						gd_show("fed in two", part.p, part.len, i);
					}
					lg_buf_free(&part);
				}
			}
			gd_expect(name, whole.p ? whole.p : "", whole.len, problem);
			if (gd_seeds && req) { /* stream/full seed: row, flags (tests/fuzz.c: dialect, usage, json), the answer */
				char sp[4096];
				struct lg_buf s;
				int flags = di | (lg_memmem(req, rn, "\"include_usage\":true") ? 0x10 : 0) |
				            (lg_memmem(req, rn, "response_format") ? 0x20 : 0);
				lg_buf_init(&s, 0);
				lg_buf_addc(&s, (char)row);
				lg_buf_addc(&s, (char)flags);
				lg_buf_add(&s, in, n);
				snprintf(sp, sizeof sp, "%s/%s/golden-%s.%s.%s", gd_seeds, kind, cname, lg_prov_rows[row].name, d->name);
				gd_write(sp, s.p, s.len);
				lg_buf_free(&s);
			}
			lg_buf_free(&whole);
			lg_buf_free(&dflt);
			free(own);
		}
	}
	if (gd_seeds && wire == LG_WIRE_BEDROCK && stream) { /* evstream seed: flags 0 (CRCs as they are), frames */
		char sp[4096];
		struct lg_buf s;
		lg_buf_init(&s, 0);
		lg_buf_addc(&s, 0);
		lg_buf_add(&s, in, n);
		snprintf(sp, sizeof sp, "%s/evstream/golden-%s", gd_seeds, cname);
		gd_write(sp, s.p, s.len);
		lg_buf_free(&s);
	}
	free(in);
}

/* ---- the runner --------------------------------------------------------- */

static int gd_was_seen(const char *name)
{
	size_t at = 0;
	while (at < gd_seen.len) {
		if (strcmp(gd_seen.p + at, name) == 0) return 1;
		at += strlen(gd_seen.p + at) + 1;
	}
	return 0;
}

static void gd_kind(const char *kind)
{
	char dir[4096], name[4096];
	char **files;
	int nf = 0, i;
	snprintf(dir, sizeof dir, "%s/%s", gd_dir, kind);
	if (!(files = gd_list(dir, &nf))) {
		printf("FAIL %s: cannot list it: %s\n", dir, strerror(errno));
		gd_failed++;
		return;
	}
	for (i = 0; i < nf; i++) {
		const char *f = files[i];
		if (strcmp(kind, "req") == 0 && gd_ends(f, ".req.json"))
			gd_req_case(f);
		else if (strcmp(kind, "req") != 0 && (gd_ends(f, ".sse") || gd_ends(f, ".frames") || gd_ends(f, ".resp.json")))
			gd_answer_case(kind, f);
	}
	/* expected files that no case makes: stale */
	for (i = 0; i < nf; i++) {
		if (!gd_ends(files[i], ".out")) continue;
		snprintf(name, sizeof name, "%s/%s", kind, files[i]);
		if (gd_was_seen(name)) continue;
		if (gd_update) {
			snprintf(dir, sizeof dir, "%.2000s/%.2000s", gd_dir, name);
			if (remove(dir) == 0) printf("removed %s (no case makes it)\n", name);
		} else if (gd_selected(name) && !gd_nfilters) {
			printf("FAIL %s: no case makes this expected file (GOLDEN_UPDATE=1 removes it)\n", name);
			gd_failed++;
		}
	}
	gd_free_list(files);
}

int main(int argc, char **argv)
{
	const char *e = getenv("GOLDEN_UPDATE"), *err;
	int a;
	gd_update = e && *e && strcmp(e, "0") != 0;
	if (!(gd_filters = (char **)calloc((size_t)argc, sizeof *gd_filters))) abort();
	for (a = 1; a < argc; a++) {
		if (strcmp(argv[a], "-d") == 0 && a + 1 < argc)
			gd_dir = argv[++a];
		else if (strcmp(argv[a], "--seeds") == 0 && a + 1 < argc)
			gd_seeds = argv[++a];
		else if (argv[a][0] == '-') {
			fprintf(stderr, "usage: %s [-d DIR] [--seeds DIR] [FILTER...]\n"
			                "  GOLDEN_UPDATE=1 rewrites the expected files\n", argv[0]);
			return 2;
		} else
			gd_filters[gd_nfilters++] = argv[a];
	}
	if ((err = tl_setup())) {
		printf("golden: the test gateway: %s\n0 passed, 1 failed\n", err);
		return 1;
	}
	lg_buf_init(&gd_seen, 0);
	if (gd_seeds) {
		static const char *const sub[] = {"canon", "stream", "full", "evstream"};
		size_t i;
		char p[4096];
		for (i = 0; i < LG_COUNTOF(sub); i++) {
			snprintf(p, sizeof p, "%s/%s", gd_seeds, sub[i]);
			mkdir(p, 0755);
		}
	}
	gd_kind("req");
	gd_kind("stream");
	gd_kind("full");
	lg_buf_free(&gd_seen);
	free(gd_filters);
	tl_teardown();
	if (gd_update) printf("golden: %d expected files written\n", gd_nupdated);
	printf("%d passed, %d failed\n", gd_passed, gd_failed);
	return gd_failed ? 1 : 0;
}
