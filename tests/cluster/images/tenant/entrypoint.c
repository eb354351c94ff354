/*
 * The entrypoint of a tenant's image named like a pause image (evil.example/tenant/pause:1).
 * If the helper ever ran an image's own entrypoint, this would run as the privileged
 * helper's main process: it leaves its mark and exits, so the helper fails too.
 * Built with musl-gcc -static.
 */
#include <stdlib.h>
#include "mark.h"

int main(void) {
	leave_mark("entrypoint");
	return 42;
}
