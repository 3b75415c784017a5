package wait

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestForErrReturnsOnceTrue(t *testing.T) {
	n := 0
	err := ForErr(Short, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("err %v after %d calls, want nil after 3", err, n)
	}
}

func TestForErrReportsTheLastError(t *testing.T) {
	n := 0
	start := time.Now()
	err := ForErr(50*time.Millisecond, time.Millisecond, func() error {
		n++
		return fmt.Errorf("attempt %d", n)
	})
	if err == nil || !strings.HasSuffix(err.Error(), fmt.Sprintf("attempt %d", n)) || !strings.Contains(err.Error(), "50ms") {
		t.Fatalf("err %v after %d calls, want the last attempt's", err, n)
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Fatalf("gave up after %v, before the 50ms bound", took)
	}
}

func TestForErrZeroTotalStillChecks(t *testing.T) {
	if err := ForErr(0, time.Millisecond, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := ForErr(0, time.Millisecond, func() error { return errors.New("no") }); err == nil {
		t.Fatal("a failing check passed")
	}
}
