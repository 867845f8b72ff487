/*
 * benchcli.c - the llmgw benchmark's own client, for what wrk cannot do.
 *
 *   cc -O2 -o benchcli benchcli.c
 *   benchcli MODE -p PORT -b BODYFILE [-P PATH] [-a AUTH] [options]
 *
 * Modes (each prints "key=value" lines, last one starting with "result"):
 *   timing  -n STREAMS    one keep-alive connection, STREAMS+1 streams one
 *                         after another (the first is a warm-up): time to first
 *                         byte and to first event after the request was sent,
 *                         and per-event forwarding delay = arrival time -
 *                         the CLOCK_MONOTONIC time the mock wrote into the
 *                         event's id; events that arrive in the same read as
 *                         an earlier event of the same stream count as batched.
 *   hold    -n CONNS -t S opens CONNS connections, one request on each, keeps
 *                         them open: prints "ready" then waits S seconds, then
 *                         counts how many the server closed meanwhile.
 *   streams -n CONNS -t S opens CONNS streams (at most -w at a time still
 *                         waiting for their first event), prints "ready" once
 *                         every stream has its first event, keeps reading for S
 *                         seconds, then closes them all.
 *   count   -n REQS       REQS requests one after another on one keep-alive
 *                         connection.
 * Every response must be a 200; with -L LEN its (de-chunked) body must be
 * LEN bytes; streams must end with "data: [DONE]" (timing, count), or with
 * an event that begins with -D TEXT ("event: response.completed" for the
 * Responses API).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *m)
{
	perror(m);
	exit(1);
}

/* --- response parser: head, Content-Length or chunked body, SSE events -- */

enum { H_HEAD, H_BODY, H_CSIZE, H_CDATA, H_CCRLF, H_TRAILER, H_DONE };

struct resp {
	int state;
	char head[16384];
	size_t hlen;
	int status, chunked;
	long long remain; /* body bytes (CL) or chunk bytes left */
	char line[128];
	size_t llen;
	long long bodylen;
	/* SSE: the text of the event being received */
	char *ev;
	size_t evlen, evcap;
	int events, done_seen;
	int keep_events;  /* scan events (else only count body bytes) */
};

/* The beginning of the event that ends a stream (-D). */
static const char *done_mark = "data: [DONE]";

/* Called for each completed SSE event (text without the blank line). */
typedef void (*event_fn)(void *ctx, const char *p, size_t n);

static void resp_reset(struct resp *r, int keep_events)
{
	free(r->ev);
	memset(r, 0, sizeof *r);
	r->keep_events = keep_events;
}

static void body_bytes(struct resp *r, const char *p, size_t n, event_fn fn, void *ctx)
{
	size_t i, start = 0;
	r->bodylen += (long long)n;
	if (!r->keep_events) return;
	if (r->evlen + n > r->evcap) {
		size_t cap = r->evcap ? r->evcap : 4096;
		while (cap < r->evlen + n) cap *= 2;
		r->ev = realloc(r->ev, cap);
		if (!r->ev) die("realloc");
		r->evcap = cap;
	}
	memcpy(r->ev + r->evlen, p, n);
	r->evlen += n;
	/* complete events end with "\n\n" */
	for (i = 1; i < r->evlen; i++) {
		if (r->ev[i] == '\n' && r->ev[i - 1] == '\n') {
			size_t len = i + 1 - start, dl = strlen(done_mark);
			r->events++;
			if (len >= dl && memcmp(r->ev + start, done_mark, dl) == 0) r->done_seen = 1;
			if (fn) fn(ctx, r->ev + start, len);
			start = i + 1;
		}
	}
	if (start) {
		memmove(r->ev, r->ev + start, r->evlen - start);
		r->evlen -= start;
	}
}

/* Feeds n bytes; returns bytes used, or -1 on a malformed response. */
static long resp_feed(struct resp *r, const char *p, size_t n, event_fn fn, void *ctx)
{
	size_t i = 0;
	while (i < n && r->state != H_DONE) {
		switch (r->state) {
		case H_HEAD: {
			char *e;
			size_t take = n - i;
			if (take > sizeof r->head - 1 - r->hlen) take = sizeof r->head - 1 - r->hlen;
			if (take == 0) return -1;
			memcpy(r->head + r->hlen, p + i, take);
			r->head[r->hlen + take] = 0;
			e = strstr(r->head, "\r\n\r\n");
			if (!e) {
				r->hlen += take;
				i += take;
				break;
			}
			{
				size_t hl = (size_t)(e - r->head) + 4;
				char *cl;
				i += hl - r->hlen;
				r->hlen = hl;
				*e = 0;
				if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) return -1;
				if (strcasestr(r->head, "\ntransfer-encoding: chunked")) {
					r->chunked = 1;
					r->state = H_CSIZE;
				} else if ((cl = strcasestr(r->head, "\ncontent-length:"))) {
					r->remain = strtoll(cl + 16, NULL, 10);
					r->state = r->remain ? H_BODY : H_DONE;
				} else {
					return -1; /* close-delimited bodies are not expected */
				}
			}
			break;
		}
		case H_BODY:
		case H_CDATA: {
			size_t take = n - i;
			if ((long long)take > r->remain) take = (size_t)r->remain;
			body_bytes(r, p + i, take, fn, ctx);
			i += take;
			r->remain -= (long long)take;
			if (r->remain == 0) r->state = r->state == H_BODY ? H_DONE : H_CCRLF;
			break;
		}
		case H_CSIZE:
		case H_CCRLF:
		case H_TRAILER: {
			char c = p[i++];
			if (r->llen >= sizeof r->line - 1) return -1;
			r->line[r->llen++] = c;
			if (c != '\n') break;
			r->line[r->llen] = 0;
			if (r->state == H_CCRLF) {
				if (r->llen != 2) return -1;
				r->state = H_CSIZE;
			} else if (r->state == H_CSIZE) {
				r->remain = strtoll(r->line, NULL, 16);
				r->state = r->remain ? H_CDATA : H_TRAILER;
			} else if (r->llen == 2) {
				r->state = H_DONE;
			}
			r->llen = 0;
			break;
		}
		}
	}
	return (long)i;
}

/* --- options ------------------------------------------------------------ */

static int port = 0, count = 1, hold_s = 3, window = 64;
static long long expect_len = -1;
static const char *path = "/v1/chat/completions", *auth = NULL, *bodyfile = NULL;
static char *req;
static size_t reqlen;

static void build_request(void)
{
	FILE *f = fopen(bodyfile, "rb");
	char *body;
	long bl;
	size_t cap;
	if (!f) die(bodyfile);
	fseek(f, 0, SEEK_END);
	bl = ftell(f);
	fseek(f, 0, SEEK_SET);
	body = malloc((size_t)bl + 1);
	if (!body || fread(body, 1, (size_t)bl, f) != (size_t)bl) die("read body");
	fclose(f);
	cap = (size_t)bl + 1024 + (auth ? strlen(auth) : 0) + strlen(path);
	req = malloc(cap);
	reqlen = (size_t)snprintf(req, cap,
	                          "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s%s%s"
	                          "Content-Type: application/json\r\nContent-Length: %ld\r\n\r\n",
	                          path, port, auth ? "Authorization: " : "", auth ? auth : "",
	                          auth ? "\r\n" : "", bl);
	memcpy(req + reqlen, body, (size_t)bl);
	reqlen += (size_t)bl;
	free(body);
}

static int connect_to(int nonblock)
{
	struct sockaddr_in sa;
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0) die("socket");
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (!nonblock) {
		/* a server that stops answering fails the run instead of hanging it */
		struct timeval tv = {30, 0};
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	}
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int resp_ok(const struct resp *r, int need_done)
{
	if (r->status != 200) return 0;
	if (expect_len >= 0 && r->bodylen != expect_len) return 0;
	if (need_done && r->chunked && !r->done_seen) return 0;
	return 1;
}

static void report_bad(const struct resp *r)
{
	static int shown;
	if (shown++ < 3)
		fprintf(stderr, "benchcli: bad response: status %d, body %lld bytes (expected %lld)%s\n",
		        r->status, r->bodylen, expect_len,
		        r->chunked && !r->done_seen ? ", no end event" : "");
}

/* A blocking request/response on fd; returns 1 ok, 0 bad, -1 I/O error. */
static int roundtrip(int fd, struct resp *r, event_fn fn, void *ctx)
{
	char buf[65536];
	if (write_all(fd, req, reqlen) < 0) return -1;
	while (r->state != H_DONE) {
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n <= 0) return -1;
		if (resp_feed(r, buf, (size_t)n, fn, ctx) < 0) return -1;
	}
	return resp_ok(r, 1);
}

/* --- timing ------------------------------------------------------------- */

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

static long long pct(long long *v, int n, double p)
{
	int i;
	if (n == 0) return -1;
	qsort(v, (size_t)n, sizeof *v, cmp_ll);
	i = (int)(p / 100.0 * (n - 1) + 0.5);
	return v[i];
}

struct timing {
	long long t_recv;     /* time of the current read */
	int in_this_read;     /* events completed by the current read */
	long long *delay;
	int ndelay, capdelay;
	int batched, first_event_seen;
	long long t_first_event;
};

static void timing_event(void *ctx, const char *p, size_t n)
{
	struct timing *t = ctx;
	const char *id = memmem(p, n, "chatcmpl-bench-", 15);
	if (!t->first_event_seen) {
		t->first_event_seen = 1;
		t->t_first_event = t->t_recv;
	}
	if (t->in_this_read++ > 0) t->batched++;
	if (id && id + 15 + 19 <= p + n) {
		long long ts = strtoll(id + 15, NULL, 10);
		if (ts > 0) {
			if (t->ndelay == t->capdelay) {
				t->capdelay = t->capdelay ? 2 * t->capdelay : 1024;
				t->delay = realloc(t->delay, (size_t)t->capdelay * sizeof *t->delay);
				if (!t->delay) die("realloc");
			}
			t->delay[t->ndelay++] = t->t_recv - ts;
		}
	}
}

static int mode_timing(void)
{
	int fd = connect_to(0), s, bad = 0, nt = 0, total_events = 0, batched = 0;
	long long *ttfb = calloc((size_t)count + 1, sizeof *ttfb);
	long long *ttfe = calloc((size_t)count + 1, sizeof *ttfe);
	struct timing t;
	struct resp r;
	char buf[65536];
	memset(&t, 0, sizeof t);
	memset(&r, 0, sizeof r);
	if (fd < 0) die("connect");
	for (s = 0; s <= count; s++) {
		long long t0, tfirst = 0;
		int warm = s == 0;
		resp_reset(&r, 1);
		t.first_event_seen = 0;
		t.batched = 0;
		if (warm) t.ndelay = 0;
		t0 = now_ns();
		if (write_all(fd, req, reqlen) < 0) die("send");
		while (r.state != H_DONE) {
			ssize_t n = recv(fd, buf, sizeof buf, 0);
			t.t_recv = now_ns();
			if (n <= 0) {
				fprintf(stderr, "benchcli: connection closed mid-stream\n");
				return 1;
			}
			if (!tfirst) tfirst = t.t_recv;
			t.in_this_read = 0;
			if (resp_feed(&r, buf, (size_t)n, timing_event, &t) < 0) {
				fprintf(stderr, "benchcli: malformed response\n");
				return 1;
			}
		}
		if (warm) {
			t.ndelay = 0;
			continue;
		}
		if (!resp_ok(&r, 1)) {
			bad++;
			report_bad(&r);
		}
		ttfb[nt] = (tfirst - t0) / 1000;
		ttfe[nt] = (t.t_first_event - t0) / 1000;
		nt++;
		total_events += r.events;
		batched += t.batched;
	}
	{
		int nd = t.ndelay, i;
		long long max = 0;
		for (i = 0; i < nd; i++) {
			t.delay[i] /= 1000; /* us */
			if (t.delay[i] > max) max = t.delay[i];
		}
		printf("ttfb_us_p50=%lld\nttfb_us_max=%lld\nfirst_event_us_p50=%lld\n", pct(ttfb, nt, 50),
		       pct(ttfb, nt, 100), pct(ttfe, nt, 50));
		printf("delay_us_p50=%lld\ndelay_us_p99=%lld\ndelay_us_max=%lld\n", pct(t.delay, nd, 50),
		       pct(t.delay, nd, 99), max);
		printf("result streams=%d events=%d timed_events=%d batched=%d bad=%d\n", nt,
		       total_events, nd, batched, bad);
	}
	close(fd);
	return bad ? 1 : 0;
}

/* --- hold --------------------------------------------------------------- */

static int mode_hold(void)
{
	int *fds = calloc((size_t)count, sizeof *fds), i, ok = 0, bad = 0, closed = 0;
	struct resp r;
	memset(&r, 0, sizeof r);
	for (i = 0; i < count; i++) {
		int k;
		fds[i] = connect_to(0);
		if (fds[i] < 0) {
			bad++;
			continue;
		}
		resp_reset(&r, 0);
		k = roundtrip(fds[i], &r, NULL, NULL);
		if (k == 1) {
			ok++;
		} else {
			bad++;
			if (k == 0) report_bad(&r);
		}
	}
	printf("ready open=%d\n", ok);
	fflush(stdout);
	sleep((unsigned)hold_s);
	for (i = 0; i < count; i++) {
		struct pollfd p = {fds[i], POLLIN, 0};
		char c;
		if (fds[i] < 0) continue;
		if (poll(&p, 1, 0) == 1 && recv(fds[i], &c, 1, MSG_DONTWAIT) <= 0) closed++;
		close(fds[i]);
	}
	printf("result conns=%d ok=%d bad=%d closed_by_server=%d\n", count, ok, bad, closed);
	return bad || closed ? 1 : 0;
}

/* --- streams ------------------------------------------------------------ */

struct sc {
	int fd, state; /* 0 unused, 1 connecting/sending, 2 waiting first event, 3 open, 4 done */
	size_t sent;
	struct resp r;
};

static int mode_streams(void)
{
	struct sc *c = calloc((size_t)count, sizeof *c);
	struct pollfd *pf = calloc((size_t)count, sizeof *pf);
	int started = 0, waiting = 0, open_ = 0, bad = 0, ended = 0, ready = 0, i;
	long long t_ready = 0, deadline = now_ns() + 60000000000LL;
	char buf[65536];
	for (;;) {
		long long t = now_ns();
		int np = 0, n;
		while (started < count && waiting < window) {
			struct sc *s = &c[started++];
			s->fd = connect_to(1);
			s->state = 1;
			resp_reset(&s->r, 1);
			if (s->fd < 0) {
				s->state = 4;
				bad++;
				continue;
			}
			waiting++;
		}
		if (!ready && open_ + bad + ended == count) {
			ready = 1;
			t_ready = t;
			printf("ready open=%d bad=%d\n", open_, bad);
			fflush(stdout);
		}
		if (ready && t - t_ready >= (long long)hold_s * 1000000000LL) break;
		if (!ready && t > deadline) {
			fprintf(stderr, "benchcli: streams: only %d of %d opened in 60 s\n", open_, count);
			break;
		}
		for (i = 0; i < started; i++) {
			if (c[i].state == 0 || c[i].state == 4) {
				pf[i].fd = -1;
				continue;
			}
			pf[i].fd = c[i].fd;
			pf[i].events = c[i].state == 1 ? POLLOUT : POLLIN;
			pf[i].revents = 0;
			np++;
		}
		n = poll(pf, (nfds_t)started, 100);
		if (n < 0 && errno != EINTR) die("poll");
		for (i = 0; n > 0 && i < started; i++) {
			struct sc *s = &c[i];
			if (pf[i].fd < 0 || !pf[i].revents) continue;
			if (s->state == 1) {
				ssize_t w = send(s->fd, req + s->sent, reqlen - s->sent, MSG_NOSIGNAL);
				if (w < 0 && errno != EAGAIN) {
					s->state = 4;
					bad++;
					waiting--;
					close(s->fd);
					continue;
				}
				if (w > 0) s->sent += (size_t)w;
				if (s->sent == reqlen) s->state = 2;
				continue;
			}
			for (;;) {
				ssize_t k = recv(s->fd, buf, sizeof buf, MSG_DONTWAIT);
				if (k < 0 && errno == EAGAIN) break;
				if (k <= 0 || resp_feed(&s->r, buf, (size_t)k, NULL, NULL) < 0) {
					if (s->state == 2) waiting--;
					if (s->state == 3) open_--;
					s->state = 4;
					bad++;
					report_bad(&s->r);
					close(s->fd);
					break;
				}
				if (s->state == 2 && s->r.status) {
					if (s->r.status != 200) {
						report_bad(&s->r);
						waiting--;
						s->state = 4;
						bad++;
						close(s->fd);
						break;
					}
					if (s->r.events > 0) {
						waiting--;
						open_++;
						s->state = 3;
					}
				}
				if (s->r.state == H_DONE) {
					if (s->state == 3) open_--;
					if (s->state == 2) waiting--;
					s->state = 4;
					ended++;
					close(s->fd);
					break;
				}
			}
		}
	}
	{
		long long evs = 0;
		for (i = 0; i < started; i++) {
			evs += c[i].r.events;
			if (c[i].state == 2 || c[i].state == 3) close(c[i].fd);
		}
		printf("result streams=%d open=%d ended=%d bad=%d events=%lld\n", count, open_, ended, bad,
		       evs);
	}
	return bad || !ready ? 1 : 0;
}

/* --- count -------------------------------------------------------------- */

static int mode_count(void)
{
	int fd = connect_to(0), i, ok = 0, bad = 0;
	long long t0 = now_ns();
	struct resp r;
	memset(&r, 0, sizeof r);
	if (fd < 0) die("connect");
	for (i = 0; i < count; i++) {
		int k;
		resp_reset(&r, 1);
		k = roundtrip(fd, &r, NULL, NULL);
		if (k < 0) {
			close(fd);
			fd = connect_to(0);
			if (fd < 0) die("connect");
			bad++;
			continue;
		}
		if (k == 1) {
			ok++;
		} else {
			bad++;
			report_bad(&r);
		}
	}
	close(fd);
	printf("result requests=%d ok=%d bad=%d ms=%lld\n", count, ok, bad, (now_ns() - t0) / 1000000);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *mode;
	int opt;
	if (argc < 2) {
		fprintf(stderr, "usage: %s timing|hold|streams|count -p PORT -b BODYFILE [-P PATH] [-a AUTH] "
		                "[-n N] [-t SECONDS] [-w WINDOW] [-L BODYLEN] [-D END_EVENT_PREFIX]\n", argv[0]);
		return 2;
	}
	mode = argv[1];
	optind = 2;
	while ((opt = getopt(argc, argv, "p:b:P:a:n:t:w:L:D:")) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'b': bodyfile = optarg; break;
		case 'P': path = optarg; break;
		case 'a': auth = optarg; break;
		case 'n': count = atoi(optarg); break;
		case 't': hold_s = atoi(optarg); break;
		case 'w': window = atoi(optarg); break;
		case 'L': expect_len = atoll(optarg); break;
		case 'D': done_mark = optarg; break;
		default: return 2;
		}
	}
	if (!port || !bodyfile) {
		fprintf(stderr, "benchcli: -p and -b are required\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	build_request();
	if (!strcmp(mode, "timing")) return mode_timing();
	if (!strcmp(mode, "hold")) return mode_hold();
	if (!strcmp(mode, "streams")) return mode_streams();
	if (!strcmp(mode, "count")) return mode_count();
	fprintf(stderr, "benchcli: unknown mode %s\n", mode);
	return 2;
}
