//go:build !unix

package dedup

// On systems without mmap, chunks live on the Go heap.
func chunkAlloc(n int) ([]byte, error) { return make([]byte, n), nil }

func chunkFree([]byte) {}
