/*
 * mockfast.c - a fast mock OpenAI upstream for the llmgw benchmark.
 *
 * One thread, epoll, non-blocking sockets, keep-alive HTTP/1.1 with
 * pipelining. Every request (headers + Content-Length body) to any path is
 * answered with a fixed OpenAI chat completion (~400 bytes, with usage), or,
 * when the body holds "stream":true, with a chunked SSE stream of N events:
 * a role chunk, N-4 content chunks, a finish chunk, a usage chunk and
 * [DONE]. With spacing 0 the stream is written in one go; with spacing S
 * the first event goes out with the head and each next one S microseconds
 * later (one timer per connection, a heap, one timerfd).
 *
 * In a spaced stream each event's "id" carries the CLOCK_MONOTONIC time (ns,
 * 19 digits) at which it was written, so a client on the same machine can
 * measure per-event forwarding delay exactly; the id has the same width in
 * every mode, so response lengths do not depend on the mode.
 *
 * A request to a path ending in /responses (the OpenAI Responses API) is
 * answered in that API's shape: a response object (output: one message
 * with the same text, usage with input/output token details), or with
 * "stream":true a chunked SSE stream of typed events ("event: <type>" and
 * data {"type", "sequence_number", ...}): response.created,
 * response.in_progress, response.output_item.added,
 * response.content_part.added, the same N-4 text pieces as
 * response.output_text.delta events, response.output_text.done,
 * response.content_part.done, response.output_item.done and
 * response.completed (the full response with usage): N+4 events, no
 * [DONE]. In a spaced stream the time goes into the ids there
 * (resp_bench<19 digits>, msg_bench<19 digits>).
 *
 * A request body may override the defaults with "bench_events":N and
 * "bench_spacing_us":N (proxies pass unknown fields on). GET /stats answers
 * {"accepted":..,"requests":..,"streams":..}.
 *
 *   cc -O2 -o mockfast mockfast.c
 *   ./mockfast [-a ADDR] [-p PORT] [-n EVENTS] [-s SPACING_US]
 * Prints "mockfast listening on ADDR:PORT" once ready (PORT 0 = any).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_REQ (1 << 20)  /* largest request (head + body) */
#define MAX_EVENTS 100000  /* bench_events upper bound */

struct conn {
	int fd;
	char *in;
	size_t inlen, incap;
	char *out;
	size_t outoff, outlen, outcap;
	int pollout;        /* EPOLLOUT registered */
	int close_after;    /* Connection: close seen */
	int streaming;      /* a spaced stream is in progress */
	int rs;             /* ... of the Responses API (events of add_rs_event) */
	int ev_next, ev_total;
	long long spacing_ns;
	long long deadline; /* CLOCK_MONOTONIC ns of the next event */
	int heapidx;        /* -1 when not in the timer heap */
	struct conn *next_dead;
};

static int ep, lfd, tfd;
static int def_events = 21;
static long def_spacing_us = 0;
static struct conn **heap;
static int nheap, heapcap;
static long long armed = -1;
static unsigned long long n_accepted, n_requests, n_streams;

/* The whole default reply and default stream, ready to write (chat
 * completions, and the Responses API's). */
static char *json_resp, *stream_resp, *rs_json_resp, *rs_stream_resp;
static size_t json_resp_len, stream_resp_len, rs_json_resp_len, rs_stream_resp_len;

static const char *const words[] = {"Hello", "!", " This", " is", " a", " fixed", " reply",
                                    " from", " the", " llmgw", " benchmark", "'s", " mock",
                                    " upstream", ",", " streamed", " or", " not", "."};
#define NWORDS (sizeof words / sizeof words[0])
#define PROMPT_TOKENS 57

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* --- growable strings ------------------------------------------------- */

struct sb {
	char *p;
	size_t n, cap;
};

static void sb_add(struct sb *b, const void *p, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap : 1024;
		while (c < b->n + n + 1) c *= 2;
		b->p = realloc(b->p, c);
		if (!b->p) die("realloc");
		b->cap = c;
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void sb_printf(struct sb *b, const char *fmt, ...)
{
	char tmp[4096];
	va_list ap;
	int n;
	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof tmp) die("sb_printf");
	sb_add(b, tmp, (size_t)n);
}

/* --- the replies ------------------------------------------------------ */

static void add_id(struct sb *b, long long ts)
{
	sb_printf(b, "\"id\":\"chatcmpl-bench-%019lld\"", ts);
}

/* The JSON of event k (0-based) of a stream of `total` events, as one
 * chunk of the chunked body: "<hex>\r\ndata: ...\n\n\r\n". */
static void add_event(struct sb *b, int k, int total, long long ts)
{
	struct sb d = {0};
	int ncontent = total - 4;
	if (k == total - 1) {
		sb_add(&d, "data: [DONE]\n\n", 14);
	} else {
		sb_add(&d, "data: {", 7);
		add_id(&d, ts);
		sb_printf(&d, ",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
		              "\"model\":\"mock-model\",\"system_fingerprint\":\"fp_bench\",");
		if (k == 0)
			sb_printf(&d, "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
			              "\"logprobs\":null,\"finish_reason\":null}]");
		else if (k <= ncontent)
			sb_printf(&d, "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s\"},"
			              "\"logprobs\":null,\"finish_reason\":null}]",
			          words[(k - 1) % NWORDS]);
		else if (k == total - 3)
			sb_printf(&d, "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
			              "\"finish_reason\":\"stop\"}]");
		else
			sb_printf(&d, "\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
			              "\"total_tokens\":%d}",
			          PROMPT_TOKENS, ncontent, PROMPT_TOKENS + ncontent);
		sb_add(&d, "}\n\n", 3);
	}
	sb_printf(b, "%zx\r\n", d.n);
	sb_add(b, d.p, d.n);
	sb_add(b, "\r\n", 2);
	free(d.p);
}

static const char stream_head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                  "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";

static void build_stream(struct sb *b, int total)
{
	int k;
	sb_add(b, stream_head, sizeof stream_head - 1);
	for (k = 0; k < total; k++) add_event(b, k, total, 0);
	sb_add(b, "0\r\n\r\n", 5);
}

static void build_json(struct sb *b, int total)
{
	struct sb d = {0};
	int k, ncontent = total - 4;
	sb_add(&d, "{", 1);
	add_id(&d, 0);
	sb_printf(&d, ",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"mock-model\","
	              "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
	for (k = 1; k <= ncontent; k++) sb_printf(&d, "%s", words[(k - 1) % NWORDS]);
	sb_printf(&d, "\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
	              "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d},"
	              "\"system_fingerprint\":\"fp_bench\"}",
	          PROMPT_TOKENS, ncontent, PROMPT_TOKENS + ncontent);
	sb_printf(b, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
	          d.n);
	sb_add(b, d.p, d.n);
	free(d.p);
}

/* --- the replies of the Responses API (POST .../responses) ------------- */

/* The text of the answer: the same pieces as the chat stream's. */
static void add_text(struct sb *b, int ncontent)
{
	int k;
	for (k = 1; k <= ncontent; k++) sb_printf(b, "%s", words[(k - 1) % NWORDS]);
}

/* The message output item, complete or as it opens (no content yet). */
static void add_rs_item(struct sb *b, int ncontent, long long ts, int done)
{
	sb_printf(b, "{\"id\":\"msg_bench%019lld\",\"type\":\"message\",\"status\":\"%s\",\"content\":[", ts,
	          done ? "completed" : "in_progress");
	if (done) {
		sb_printf(b, "{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"");
		add_text(b, ncontent);
		sb_add(b, "\"}", 2);
	}
	sb_printf(b, "],\"role\":\"assistant\"}");
}

/* A response object: in progress (output [], usage null) or completed. */
static void add_rs_obj(struct sb *b, int ncontent, long long ts, int done)
{
	sb_printf(b, "{\"id\":\"resp_bench%019lld\",\"object\":\"response\",\"created_at\":1700000000,"
	             "\"status\":\"%s\",\"background\":false,\"error\":null,\"incomplete_details\":null,"
	             "\"instructions\":null,\"max_output_tokens\":64,\"model\":\"mock-model\",\"output\":[",
	          ts, done ? "completed" : "in_progress");
	if (done) add_rs_item(b, ncontent, ts, 1);
	sb_printf(b, "],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
	             "\"reasoning\":{\"effort\":null,\"summary\":null},\"service_tier\":\"default\",\"store\":false,"
	             "\"temperature\":0.2,\"text\":{\"format\":{\"type\":\"text\"},\"verbosity\":\"medium\"},"
	             "\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":");
	if (done)
		sb_printf(b, "{\"input_tokens\":%d,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":%d,"
		             "\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":%d}",
		          PROMPT_TOKENS, ncontent, PROMPT_TOKENS + ncontent);
	else
		sb_add(b, "null", 4);
	sb_printf(b, ",\"user\":null,\"metadata\":{}}");
}

/* Event k (0-based) of a Responses stream with ncontent text deltas
 * (ncontent + 8 events), as one chunk: "<hex>\r\nevent: T\ndata: {...}\n\n\r\n". */
static void add_rs_event(struct sb *b, int k, int ncontent, long long ts)
{
	static const char *const tail[] = {"response.output_text.done", "response.content_part.done",
	                                   "response.output_item.done", "response.completed"};
	struct sb d = {0};
	const char *type = k == 0   ? "response.created"
	                   : k == 1 ? "response.in_progress"
	                   : k == 2 ? "response.output_item.added"
	                   : k == 3 ? "response.content_part.added"
	                   : k < 4 + ncontent ? "response.output_text.delta"
	                                      : tail[k - 4 - ncontent];
	sb_printf(&d, "event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%d", type, type, k);
	if (k <= 1 || k == ncontent + 7) {
		sb_add(&d, ",\"response\":", 12);
		add_rs_obj(&d, ncontent, ts, k > 1);
	} else if (k == 2 || k == ncontent + 6) {
		sb_add(&d, ",\"output_index\":0,\"item\":", 25);
		add_rs_item(&d, ncontent, ts, k > 2);
	} else {
		sb_printf(&d, ",\"item_id\":\"msg_bench%019lld\",\"output_index\":0,\"content_index\":0", ts);
		if (k == 3) {
			sb_printf(&d, ",\"part\":{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"\"}");
		} else if (k < 4 + ncontent) {
			sb_printf(&d, ",\"delta\":\"%s\",\"logprobs\":[],\"obfuscation\":\"bench\"", words[(k - 4) % NWORDS]);
		} else if (k == ncontent + 4) {
			sb_add(&d, ",\"text\":\"", 9);
			add_text(&d, ncontent);
			sb_printf(&d, "\",\"logprobs\":[]");
		} else {
			sb_printf(&d, ",\"part\":{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"");
			add_text(&d, ncontent);
			sb_add(&d, "\"}", 2);
		}
	}
	sb_add(&d, "}\n\n", 3);
	sb_printf(b, "%zx\r\n", d.n);
	sb_add(b, d.p, d.n);
	sb_add(b, "\r\n", 2);
	free(d.p);
}

static void build_rs_stream(struct sb *b, int total)
{
	int k, ncontent = total - 4;
	sb_add(b, stream_head, sizeof stream_head - 1);
	for (k = 0; k < ncontent + 8; k++) add_rs_event(b, k, ncontent, 0);
	sb_add(b, "0\r\n\r\n", 5);
}

static void build_rs_json(struct sb *b, int total)
{
	struct sb d = {0};
	add_rs_obj(&d, total - 4, 0, 1);
	sb_printf(b, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
	          d.n);
	sb_add(b, d.p, d.n);
	free(d.p);
}

/* Is the request line's path .../responses (a query string allowed)? */
static int is_responses(const char *h, size_t n)
{
	const char *e = memchr(h, '\r', n), *sp;
	if (!e) return 0;
	sp = memchr(h, ' ', (size_t)(e - h));
	if (!sp) return 0;
	for (sp++; sp < e && *sp != ' ' && *sp != '?'; sp++)
		;
	return sp - h >= 10 && memcmp(sp - 10, "/responses", 10) == 0;
}

/* --- timers ------------------------------------------------------------ */

static void heap_swap(int i, int j)
{
	struct conn *t = heap[i];
	heap[i] = heap[j];
	heap[j] = t;
	heap[i]->heapidx = i;
	heap[j]->heapidx = j;
}

static void heap_up(int i)
{
	while (i > 0 && heap[(i - 1) / 2]->deadline > heap[i]->deadline) {
		heap_swap(i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void heap_down(int i)
{
	for (;;) {
		int l = 2 * i + 1, r = l + 1, m = i;
		if (l < nheap && heap[l]->deadline < heap[m]->deadline) m = l;
		if (r < nheap && heap[r]->deadline < heap[m]->deadline) m = r;
		if (m == i) return;
		heap_swap(i, m);
		i = m;
	}
}

static void heap_push(struct conn *c)
{
	if (nheap == heapcap) {
		heapcap = heapcap ? heapcap * 2 : 256;
		heap = realloc(heap, (size_t)heapcap * sizeof *heap);
		if (!heap) die("realloc");
	}
	heap[nheap] = c;
	c->heapidx = nheap++;
	heap_up(c->heapidx);
}

static void heap_remove(struct conn *c)
{
	int i = c->heapidx;
	if (i < 0) return;
	c->heapidx = -1;
	if (i != --nheap) {
		heap[i] = heap[nheap];
		heap[i]->heapidx = i;
		heap_down(i);
		heap_up(i);
	}
}

static void rearm(void)
{
	struct itimerspec its;
	long long d = nheap ? heap[0]->deadline : 0;
	if (d == armed) return;
	memset(&its, 0, sizeof its);
	if (nheap) {
		if (d <= 0) d = 1;
		its.it_value.tv_sec = d / 1000000000LL;
		its.it_value.tv_nsec = d % 1000000000LL;
	}
	if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
	armed = d;
}

/* --- connections -------------------------------------------------------- */

/* Closed connections are freed at the end of the loop iteration: one may
 * still appear later in the same batch of epoll events (fd is then -1). */
static struct conn *dead;

static void conn_close(struct conn *c)
{
	if (c->fd < 0) return;
	heap_remove(c);
	close(c->fd);
	c->fd = -1;
	c->streaming = 0;
	c->next_dead = dead;
	dead = c;
}

static void reap(void)
{
	while (dead) {
		struct conn *c = dead;
		dead = c->next_dead;
		free(c->in);
		free(c->out);
		free(c);
	}
}

static void set_pollout(struct conn *c, int on)
{
	struct epoll_event ev;
	if (c->pollout == on) return;
	ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
	ev.data.ptr = c;
	if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
	c->pollout = on;
}

/* Writes what is queued; returns -1 when the connection died. */
static int conn_flush(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) break;
			return -1;
		}
		c->outoff += (size_t)w;
	}
	if (c->outoff == c->outlen) c->outoff = c->outlen = 0;
	set_pollout(c, c->outlen > 0);
	return 0;
}

/* Sends p[0..n): at once when nothing is queued, the rest queued. */
static int conn_send(struct conn *c, const char *p, size_t n)
{
	if (c->outlen == 0) {
		for (;;) {
			ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR) continue;
				if (errno == EAGAIN) break;
				return -1;
			}
			p += w;
			n -= (size_t)w;
			if (n == 0) return 0;
		}
	}
	if (c->outlen + n > c->outcap) {
		size_t cap = c->outcap ? c->outcap : 4096;
		while (cap < c->outlen + n) cap *= 2;
		c->out = realloc(c->out, cap);
		if (!c->out) die("realloc");
		c->outcap = cap;
	}
	memcpy(c->out + c->outlen, p, n);
	c->outlen += n;
	set_pollout(c, 1);
	return 0;
}

/* The value of integer field "name":N in body, or def. */
static long body_long(const char *b, size_t n, const char *name, long def)
{
	size_t ln = strlen(name);
	const char *p = memmem(b, n, name, ln), *e = b + n;
	if (!p) return def;
	p += ln;
	while (p < e && (*p == ' ' || *p == ':' || *p == '\t')) p++;
	if (p == e || *p < '0' || *p > '9') return def;
	return strtol(p, NULL, 10);
}

static int body_stream(const char *b, size_t n)
{
	const char *p = memmem(b, n, "\"stream\"", 8), *e = b + n;
	if (!p) return 0;
	p += 8;
	while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == ':')) p++;
	return p < e && *p == 't';
}

static int send_event(struct conn *c)
{
	struct sb b = {0};
	int r;
	if (c->rs)
		add_rs_event(&b, c->ev_next, c->ev_total - 8, now_ns());
	else
		add_event(&b, c->ev_next, c->ev_total, now_ns());
	c->ev_next++;
	if (c->ev_next == c->ev_total) sb_add(&b, "0\r\n\r\n", 5);
	r = conn_send(c, b.p, b.n);
	free(b.p);
	return r;
}

static int conn_process(struct conn *c);

/* A timer fired: the next event of a spaced stream. */
static void conn_tick(struct conn *c)
{
	if (send_event(c) < 0) {
		conn_close(c);
		return;
	}
	if (c->ev_next < c->ev_total) {
		c->deadline += c->spacing_ns;
		heap_push(c);
		return;
	}
	c->streaming = 0;
	if (conn_process(c) < 0) conn_close(c);
}

/* Answers every complete request in c->in; -1 = close the connection. */
static int conn_process(struct conn *c)
{
	size_t used = 0;
	int r = 0;
	while (!c->streaming && !c->close_after) {
		char *h = c->in + used, *he, *cl;
		size_t avail = c->inlen - used, hlen;
		long clen = 0;
		he = memmem(h, avail, "\r\n\r\n", 4);
		if (!he) {
			if (avail > 65536) r = -1;
			break;
		}
		hlen = (size_t)(he - h) + 4;
		*he = 0; /* headers as a C string, for strcasestr */
		cl = strcasestr(h, "\ncontent-length:");
		if (cl) clen = strtol(cl + 16, NULL, 10);
		if (strcasestr(h, "\ntransfer-encoding:")) {
			*he = '\r';
			static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
			conn_send(c, bad, sizeof bad - 1);
			c->close_after = 1;
			break;
		}
		if (strcasestr(h, "\nconnection: close")) c->close_after = 1;
		*he = '\r';
		if (clen < 0 || clen > MAX_REQ) return -1;
		if (avail < hlen + (size_t)clen) break;
		n_requests++;
		if (strncmp(h, "GET /stats ", 11) == 0) {
			char body[256], resp[512];
			int bn = snprintf(body, sizeof body, "{\"accepted\":%llu,\"requests\":%llu,\"streams\":%llu}",
			                  n_accepted, n_requests, n_streams);
			int rn = snprintf(resp, sizeof resp,
			                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			                  bn, body);
			r = conn_send(c, resp, (size_t)rn);
		} else if (body_stream(h + hlen, (size_t)clen)) {
			long ev = body_long(h + hlen, (size_t)clen, "\"bench_events\"", def_events);
			long sp = body_long(h + hlen, (size_t)clen, "\"bench_spacing_us\"", def_spacing_us);
			int rs = is_responses(h, hlen);
			if (ev < 4) ev = 4;
			if (ev > MAX_EVENTS) ev = MAX_EVENTS;
			n_streams++;
			if (sp <= 0) {
				if (ev == def_events) {
					r = rs ? conn_send(c, rs_stream_resp, rs_stream_resp_len)
					       : conn_send(c, stream_resp, stream_resp_len);
				} else {
					struct sb b = {0};
					if (rs)
						build_rs_stream(&b, (int)ev);
					else
						build_stream(&b, (int)ev);
					r = conn_send(c, b.p, b.n);
					free(b.p);
				}
			} else {
				c->rs = rs;
				c->ev_total = rs ? (int)ev + 4 : (int)ev; /* Responses: 8 events besides the text */
				c->ev_next = 0;
				c->spacing_ns = sp * 1000LL;
				r = conn_send(c, stream_head, sizeof stream_head - 1);
				if (r == 0) r = send_event(c);
				c->streaming = 1;
				c->deadline = now_ns() + c->spacing_ns;
				heap_push(c);
			}
		} else {
			long ev = body_long(h + hlen, (size_t)clen, "\"bench_events\"", def_events);
			int rs = is_responses(h, hlen);
			if (ev < 4) ev = 4;
			if (ev > MAX_EVENTS) ev = MAX_EVENTS;
			if (ev == def_events) {
				r = rs ? conn_send(c, rs_json_resp, rs_json_resp_len) : conn_send(c, json_resp, json_resp_len);
			} else {
				struct sb b = {0};
				if (rs)
					build_rs_json(&b, (int)ev);
				else
					build_json(&b, (int)ev);
				r = conn_send(c, b.p, b.n);
				free(b.p);
			}
		}
		used += hlen + (size_t)clen;
		if (r < 0) break;
	}
	if (used) {
		memmove(c->in, c->in + used, c->inlen - used);
		c->inlen -= used;
	}
	if (r == 0 && c->close_after && !c->streaming && c->outlen == 0) return -1;
	return r;
}

static void conn_read(struct conn *c)
{
	for (;;) {
		ssize_t n;
		if (c->incap - c->inlen < 4096) {
			size_t cap = c->incap ? c->incap * 2 : 8192;
			if (cap > MAX_REQ + 65536) {
				conn_close(c);
				return;
			}
			c->in = realloc(c->in, cap);
			if (!c->in) die("realloc");
			c->incap = cap;
		}
		n = recv(c->fd, c->in + c->inlen, c->incap - c->inlen, 0);
		if (n < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) break;
			conn_close(c);
			return;
		}
		if (n == 0) {
			conn_close(c);
			return;
		}
		c->inlen += (size_t)n;
		if ((size_t)n < 4096) break; /* likely drained; level-triggered epoll calls again */
	}
	if (conn_process(c) < 0) conn_close(c);
}

static void do_accept(void)
{
	for (;;) {
		struct epoll_event ev;
		struct conn *c;
		int one = 1;
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR) continue;
			if (errno != EAGAIN) perror("accept");
			return;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		c = calloc(1, sizeof *c);
		if (!c) die("calloc");
		c->fd = fd;
		c->heapidx = -1;
		ev.events = EPOLLIN;
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
		n_accepted++;
	}
}

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

int main(int argc, char **argv)
{
	const char *addr = "127.0.0.1";
	int port = 0, opt, one = 1;
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;
	struct epoll_event ev, evs[256];
	struct sb b = {0};

	while ((opt = getopt(argc, argv, "a:p:n:s:h")) != -1) {
		switch (opt) {
		case 'a': addr = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'n': def_events = atoi(optarg); break;
		case 's': def_spacing_us = atol(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-a ADDR] [-p PORT] [-n EVENTS (>=4, default 21)] "
			                "[-s SPACING_US (default 0)]\n", argv[0]);
			return opt == 'h' ? 0 : 2;
		}
	}
	if (def_events < 4) def_events = 4;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);

	build_json(&b, def_events);
	json_resp = b.p;
	json_resp_len = b.n;
	memset(&b, 0, sizeof b);
	build_stream(&b, def_events);
	stream_resp = b.p;
	stream_resp_len = b.n;
	memset(&b, 0, sizeof b);
	build_rs_json(&b, def_events);
	rs_json_resp = b.p;
	rs_json_resp_len = b.n;
	memset(&b, 0, sizeof b);
	build_rs_stream(&b, def_events);
	rs_stream_resp = b.p;
	rs_stream_resp_len = b.n;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0) die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", addr);
		return 2;
	}
	if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
	if (listen(lfd, 4096) < 0) die("listen");
	if (getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) die("getsockname");

	ep = epoll_create1(EPOLL_CLOEXEC);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (ep < 0 || tfd < 0) die("epoll/timerfd");
	ev.events = EPOLLIN;
	ev.data.ptr = &lfd;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");
	ev.data.ptr = &tfd;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0) die("epoll_ctl");

	printf("mockfast listening on %s:%d (events %d, spacing %ld us; json %zu bytes, stream %zu bytes; "
	       "responses json %zu bytes, stream %zu bytes)\n",
	       addr, ntohs(sa.sin_port), def_events, def_spacing_us, json_resp_len, stream_resp_len, rs_json_resp_len,
	       rs_stream_resp_len);
	fflush(stdout);

	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1), i;
		if (n < 0) {
			if (errno == EINTR) continue;
			die("epoll_wait");
		}
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &lfd) {
				do_accept();
			} else if (p == &tfd) {
				unsigned long long x;
				long long t = now_ns();
				if (read(tfd, &x, sizeof x) < 0 && errno != EAGAIN) die("read timerfd");
				armed = -1;
				while (nheap && heap[0]->deadline <= t) {
					struct conn *c = heap[0];
					heap_remove(c);
					conn_tick(c);
				}
			} else {
				struct conn *c = p;
				if (c->fd < 0) continue;
				if (evs[i].events & EPOLLOUT) {
					if (conn_flush(c) < 0) {
						conn_close(c);
						continue;
					}
					if (c->close_after && !c->streaming && c->outlen == 0) {
						conn_close(c);
						continue;
					}
				}
				if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) conn_read(c);
			}
		}
		reap();
		rearm();
	}
}
