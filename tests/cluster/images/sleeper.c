/*
 * sleeper: the only program in the e2e cluster's images.
 *
 * - As /pause in the sandbox ("pause") image every node's containerd needs: sleeps as the
 *   pod's PID 1 and reaps children re-parented to it.
 * - As /app in images made by tests/cluster/make-image: prints its arguments as one line
 *   (the image names itself there, so a test can read it with `kubectl logs`), then sleeps.
 *
 * Exits 0 on SIGTERM or SIGINT, so pods stop at once instead of waiting out the grace period.
 * Built with `musl-gcc -static` so the image needs no libc, loader or shell.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) { (void)sig; stop = 1; }

static void on_child(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv) {
	struct sigaction sa;
	sigset_t block, wait_mask;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_child;
	sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	sigaction(SIGCHLD, &sa, NULL);

	/* Block the stop signals outside sigsuspend, so one arriving between the check of
	 * `stop` and going to sleep is not lost. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &wait_mask);
	sigdelset(&wait_mask, SIGTERM);
	sigdelset(&wait_mask, SIGINT);

	if (argc > 1) {
		for (int i = 1; i < argc; i++)
			printf("%s%s", i > 1 ? " " : "", argv[i]);
		putchar('\n');
		fflush(stdout);
	}
	while (!stop)
		sigsuspend(&wait_mask);
	return 0;
}
