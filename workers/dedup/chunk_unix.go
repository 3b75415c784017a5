//go:build unix

package dedup

import "syscall"

// chunkAlloc maps n bytes of anonymous memory outside the Go heap: pages
// cost memory only once written, and chunkFree gives them back at once,
// without waiting for a collection.
func chunkAlloc(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
}

func chunkFree(b []byte) { _ = syscall.Munmap(b) }
