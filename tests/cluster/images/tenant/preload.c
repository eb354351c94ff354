/*
 * A tenant's library, named in its image's /etc/ld.so.preload and LD_PRELOAD: the dynamic
 * loader runs its constructor in every dynamically linked program started in that image's
 * root or with that environment. In the tenant's own program (tenant-app) it only says so,
 * which proves the image is armed; anywhere else (a host tool the helper ran inside this
 * image's root) it leaves its mark and kills the process, so the helper's step fails too.
 * Built with gcc -shared -fPIC.
 */
#include <stdlib.h>
#include "mark.h"

__attribute__((constructor)) static void tenant_preload(void) {
	char exe[256] = {0};
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	const char *base = n > 0 ? strrchr(exe, '/') : NULL;
	if (base && strcmp(base, "/tenant-app") == 0) {
		fprintf(stderr, "%s preload-armed in tenant-app\n", MARK);
		return;
	}
	leave_mark("preload");
	_exit(42);
}
