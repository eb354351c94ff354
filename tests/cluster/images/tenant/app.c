/*
 * The tenant pod's own program: dynamically linked (so the image's preload library runs in
 * it and says so in the pod's log), then sleeps until stopped. Built with gcc.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
	signal(SIGTERM, SIG_DFL);
	puts("tenant app running");
	fflush(stdout);
	for (;;)
		pause();
}
